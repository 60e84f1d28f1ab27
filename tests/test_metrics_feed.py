"""The audit follower behind /metrics on a real SQLite store: it counts from
the head it opened at, sees rows of other connections (an actor process's
store), catches up in bounded batches and stops when closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from naosd.dashboard.metrics_feed import BATCH, MetricsFeed
from naosd.storage.db import AsyncStore
from naosd.storage.store import Store


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    store = await AsyncStore.open(tmp_path / "naos.db", checkpoint=tmp_path / "audit.head",
                                  synchronous="normal", busy_timeout_ms=5000)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def other(tmp_path: Path) -> AsyncIterator[Store]:
    """A second connection to the same database, as a supervisor process has."""
    store = Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head",
                       synchronous="normal")
    try:
        yield store
    finally:
        store.close()


def runs(feed: MetricsFeed, agent: str = "echo") -> float | None:
    return feed.registry.get_sample_value("naos_agent_runs_total",
                                          {"agent": agent, "outcome": "ok"})


async def test_counts_only_rows_after_the_head_it_opened_at(db: AsyncStore, other: Store):
    await db.audit("agent.run", agent="echo", ok=True, ms=1.0)  # before: history
    feed = await MetricsFeed.open(db)
    try:
        assert feed.seq == 1 and runs(feed) is None
        await db.audit("agent.run", agent="echo", ok=True, ms=1.0)
        other.append_audit("agent.crashed", actor="agents", agent="echo",
                           detail={"name": "echo", "supervisor": "agents", "reason": "x"})
        await feed.catch_up()  # what a scrape does first: no wait for the poll
        assert runs(feed) == 1
        assert feed.registry.get_sample_value(
            "naos_child_crashes_total",
            {"kind": "agent", "name": "echo", "supervisor": "agents"}) == 1
        assert feed.registry.get_sample_value(
            "naos_agent_run_duration_seconds_count", {"agent": "echo"}) == 1
        assert feed.registry.get_sample_value("naos_metrics_audit_seq") == 3
    finally:
        await feed.aclose()


async def test_the_follower_folds_rows_without_a_scrape(db: AsyncStore, other: Store):
    feed = await MetricsFeed.open(db)
    try:
        await db.audit("agent.run", agent="echo", ok=True, ms=1.0)  # wakes it at once
        other.append_audit("agent.run", agent="other", detail={"ok": True, "ms": 1.0})
        async with asyncio.timeout(30):  # found by the poll (every POLL_S)
            while runs(feed) != 1 or runs(feed, "other") != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await feed.aclose()
    assert feed._task is not None and feed._task.done()


async def test_a_scrape_folds_a_bounded_backlog_the_follower_the_rest(db: AsyncStore,
                                                                      other: Store):
    feed = MetricsFeed(db, after=0)  # not following: the backlog stays
    with other.transaction() as tx:
        for _ in range(BATCH * 2 + 10):
            tx.audit("wasm.run", detail={"exit_code": 0, "fuel": 2, "wall_ms": 1.0})
    assert await feed.catch_up(max_batches=1) is False
    assert feed.seq == BATCH
    assert feed.registry.get_sample_value("naos_wasm_runs_total", {"outcome": "ok"}) == BATCH
    assert await feed.catch_up() is True
    assert feed.seq == BATCH * 2 + 10
    assert feed.registry.get_sample_value(
        "naos_wasm_fuel_total", {"source": "run", "skill": ""}) == (BATCH * 2 + 10) * 2
