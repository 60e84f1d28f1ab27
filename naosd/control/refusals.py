"""Refused connections and denied calls, audited in aggregate.

A flood of refusals must not become a flood of fsynced audit rows.  The pure
``Tally`` allows at most one row per key (``client.refused`` per uid,
``client.denied`` per uid and method) per interval: the first refusal of a
quiet key is reported at once with ``count`` 1; the ones that follow within
the interval are counted and reported together, with their ``count``, when
the interval ends (or when naosd stops).  ``AuditedRefusals`` is the shell:
a timer on the event loop and the audit writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from naosd.control.peers import Peer
from naosd.control.server import Refusals
from naosd.errors import NaosError

log = logging.getLogger("naosd.control.refusals")

INTERVAL_S = 60.0
MAX_KEYS = 4096  # past this many keys counting at once, a new one counts under (kind, "*")

Key = tuple[str, ...]  # (kind, ...): ("client.refused", uid), ("client.denied", uid, method)


@dataclass(frozen=True, slots=True)
class Report:
    key: Key
    count: int
    detail: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.key[0]


@dataclass(slots=True)
class _Window:
    ends: float
    count: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class Tally:
    """Counts events per key; decides when each count is reported."""

    def __init__(self, interval: float = INTERVAL_S, max_keys: int = MAX_KEYS) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._windows: dict[Key, _Window] = {}

    def note(self, key: Key, detail: dict[str, Any], now: float) -> Report | None:
        """One event; a Report to write now if ``key`` was quiet, else None."""
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key, detail = (key[0], "*"), {**detail, "overflow": True}
        window = self._windows.get(key)
        if window is None:  # quiet: report at once, count the rest
            self._windows[key] = _Window(now + self.interval)
            return Report(key, 1, detail)
        window.count += 1
        window.detail = detail
        return None

    def due(self, now: float) -> list[Report]:
        """The counts of the intervals ended by ``now``.  A key that had events
        gets a new interval; a key that had none is quiet again."""
        out = []
        for key, window in list(self._windows.items()):
            if window.ends > now:
                continue
            if window.count:
                out.append(Report(key, window.count, window.detail))
                self._windows[key] = _Window(now + self.interval)
            else:
                del self._windows[key]
        return out

    def drain(self) -> list[Report]:
        """Every count not reported yet (at stop)."""
        out = [Report(k, w.count, w.detail) for k, w in self._windows.items() if w.count]
        self._windows.clear()
        return out

    def next_due(self) -> float | None:
        return min((w.ends for w in self._windows.values()), default=None)


class AuditedRefusals(Refusals):
    """Writes the Tally's reports as audit rows (and one log line each)."""

    def __init__(self, audit: Callable[..., Awaitable[object]], *,
                 interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._audit = audit
        self._clock = clock
        self.tally = Tally(interval)
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def refused(self, peer: Peer, reason: str) -> None:
        self._note(("client.refused", str(peer.uid)),
                   {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "reason": reason})

    def denied(self, peer: Peer, method: str, need: str, role: str) -> None:
        self._note(("client.denied", str(peer.uid), method),
                   {"uid": peer.uid, "pid": peer.pid, "method": method, "needs": need,
                    "role": role})

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for report in self.tally.drain():
            self._write(report)
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=5.0)

    def _note(self, key: Key, detail: dict[str, Any]) -> None:
        report = self.tally.note(key, detail, self._clock())
        if report is not None:
            self._write(report)
        self._arm()

    def _arm(self) -> None:
        due = self.tally.next_due()
        if self._timer is None and due is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, due - self._clock()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        for report in self.tally.due(self._clock()):
            self._write(report)
        self._arm()

    def _write(self, report: Report) -> None:
        detail = {**report.detail, "count": report.count}
        what = detail.get("reason") or f"{detail.get('method')} by uid {detail.get('uid')}"
        log.warning("%s (%d): %s", report.kind, report.count, what)
        task = asyncio.get_running_loop().create_task(self._append(report.kind, detail))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _append(self, kind: str, detail: dict[str, Any]) -> None:
        with contextlib.suppress(NaosError):  # the store is closing: the log line stays
            await self._audit(kind, **detail)
