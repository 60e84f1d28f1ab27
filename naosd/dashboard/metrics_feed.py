"""The counters and histograms of ``/metrics``: one asyncio task follows the
audit log and applies :func:`naosd.dashboard.metrics_fold.fold`'s updates to
prometheus-client metrics in a registry of its own.

It follows the table from its head when naosd started, so every counter
starts at zero with naosd (Prometheus' ``rate()`` and ``increase()`` handle
the reset).  Rows written by actor processes (supervisors) are found by the
poll (``POLL_S``); rows naosd appends wake the follower at once; and a scrape
first folds whatever is committed and not folded yet, so what it shows is no
older than the scrape (up to ``SCRAPE_BATCHES`` batches; a bigger backlog is
left to the follower).  The registry also holds the standard process and
platform collectors (``process_*`` of naosd's own process, not of its actor
processes; ``python_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from naosd.dashboard.metrics_fold import COUNTER, FAMILIES, OpenSteps, fold
from naosd.errors import NaosError
from naosd.storage.audit import AuditRow
from naosd.storage.db import AsyncStore
from naosd.storage.store import Store

log = logging.getLogger("naosd.dashboard.metrics")

BATCH: Final = 500
POLL_S: Final = 0.5
SCRAPE_BATCHES: Final = 20
DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                           0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds: agent handlers answer in well under a millisecond, steps and
fan-outs can take minutes."""


def build_registry(seq: Callable[[], int]
                   ) -> tuple[CollectorRegistry, dict[str, Counter | Histogram]]:
    """A registry with every family of FAMILIES (no samples yet), the
    standard process, platform and GC collectors, and ``seq()`` as
    ``naos_metrics_audit_seq``."""
    # naosd is prometheus-client's only user in its process: no `_created`
    # series (they would double the series count and say only "since start").
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    metrics: dict[str, Counter | Histogram] = {}
    for family in FAMILIES.values():
        if family.kind == COUNTER:
            metrics[family.name] = Counter(family.name, family.help, family.labels,
                                           registry=registry)
        else:
            metrics[family.name] = Histogram(family.name, family.help, family.labels,
                                             registry=registry, buckets=DURATION_BUCKETS)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_Progress(seq))
    return registry, metrics


class MetricsFeed:
    """Folds audit rows into :attr:`registry`; :meth:`open` starts following."""

    def __init__(self, db: AsyncStore, after: int) -> None:
        self.registry, self._metrics = build_registry(lambda: self.seq)
        self.seq = after  # the last row folded
        self._db = db
        self._steps = OpenSteps()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, db: AsyncStore) -> MetricsFeed:
        """Start following from the head now (close with :meth:`aclose`)."""
        head = await db.call(lambda s: s.audit_head())
        feed = cls(db, head.seq if head else 0)
        feed._task = asyncio.get_running_loop().create_task(feed._follow(),
                                                            name="naos-metrics-feed")
        feed._task.add_done_callback(_report_death)
        return feed

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def apply(self, rows: Iterable[AuditRow]) -> None:
        """Fold ``rows`` (in seq order, all after :attr:`seq`) into the metrics."""
        for row in rows:
            for update in fold(self._steps, row):
                metric = self._metrics[update.name]
                child = metric.labels(*update.labels) if update.labels else metric
                if isinstance(child, Counter):
                    child.inc(update.value)
                else:
                    child.observe(update.value)
            self.seq = row.seq

    async def catch_up(self, max_batches: int = SCRAPE_BATCHES) -> bool:
        """Fold what is committed, ``max_batches`` of BATCH rows at most; True
        when nothing committed is left."""
        async with self._lock:
            for _ in range(max_batches):
                rows = await self._db.call(functools.partial(_rows_after, self.seq))
                self.apply(rows)
                if len(rows) < BATCH:
                    return True
            return False

    async def _follow(self) -> None:
        while True:
            try:
                while not await self.catch_up():  # the lock is let go between bounded
                    pass  # catch-ups: a scrape waits for one at most
            except NaosError as exc:  # the store refused (busy, closing): next poll
                log.warning("metrics: reading the audit log failed: %s", exc.message)
            await self._db.wait_changed(POLL_S)


class _Progress:
    """``naos_metrics_audit_seq``: how far the fold has read (compare with
    ``naos_audit_head_seq``)."""

    def __init__(self, seq: Callable[[], int]) -> None:
        self._seq = seq

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("naos_metrics_audit_seq",
                                "Sequence number of the newest audit row counted in the "
                                "metrics", value=self._seq())


def _rows_after(seq: int, store: Store) -> list[AuditRow]:
    return store.audit_after(seq, limit=BATCH)


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("metrics: the audit follower stopped; counters no longer move",
                  exc_info=task.exception())
