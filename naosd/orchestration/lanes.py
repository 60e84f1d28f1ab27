"""Each run's transitions committed in order, many runs' in one commit.

A run's shell (an actor) numbers its transitions and sends them without
waiting for each commit; port requests are served as separate tasks, so
naosd puts them back in order here: transition ``seq`` of a run is written
only after ``seq - 1`` (:meth:`RunLanes.commit`), and a step's agent is
asked only after its transition is on disk.  ``epoch`` names one
incarnation of the shell (a new one each time a shell loads the run): a
request of an older epoch is refused, so a crashed shell's leftovers never
overwrite its replacement's record.

:class:`RunWriter` is the group commit (like the broker's ledger writer):
whatever transitions of different runs queued while the previous commit was
on disk go in one transaction, each in its own savepoint.

:class:`Watchers` wakes whoever waits for a run (``saga.wait``,
``pool.run``) when one of its records is committed."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from naosd.errors import Conflict, NaosError, Unavailable
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore

MAX_BATCH = 256
TURN_WAIT_S = 60.0  # a transition whose predecessor never came: the shell restarts


class RunWriter:
    """Group commit of run transitions."""

    def __init__(self, db: AsyncStore) -> None:
        self._db = db
        self._queue: list[tuple[orch_store.Change, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.commits = 0  # transactions written (for tests and benchmarks)

    async def write(self, change: orch_store.Change) -> None:
        """Queue ``change``; return once it is committed (or raise its error)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((change, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(done)  # a cancelled caller does not cancel the others' commit

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            changes = [c for c, _ in batch]
            errors: list[Exception | None]
            try:
                errors = list(await self._db.call(
                    functools.partial(_save_changes, changes)))
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of the batch
                errors = [exc] * len(batch)
            self.commits += 1
            for (_, done), error in zip(batch, errors, strict=True):
                if done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
            await self._db.notify()


@dataclass
class _Lane:
    epoch: int
    final: frozenset[str]  # a record in one of these statuses closes the lane
    committed: int = 0
    broken: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class RunLanes:
    """Per-run order of commits, by epoch and sequence number."""

    def __init__(self, writer: RunWriter, watchers: Watchers) -> None:
        self._writer = writer
        self._watchers = watchers
        self._lanes: dict[str, _Lane] = {}
        self._epochs = itertools.count(1)

    def open(self, run_id: str, final: frozenset[str]) -> int:
        """A new incarnation of ``run_id``'s shell: its epoch (earlier ones
        are refused from now on).  The lane closes with a record whose
        status is one of ``final``."""
        old = self._lanes.get(run_id)
        lane = self._lanes[run_id] = _Lane(next(self._epochs), final)
        if old is not None:
            old.broken = "its run was loaded again by a newer shell"
            old.wake()
        return lane.epoch

    def close(self, run_id: str, epoch: int | None = None) -> None:
        """Forget ``run_id``'s lane (of ``epoch``, or whichever it is)."""
        lane = self._lanes.get(run_id)
        if lane is not None and epoch in (None, lane.epoch):
            del self._lanes[run_id]
            lane.broken = "its run is closed"
            lane.wake()

    def epoch(self, run_id: str) -> int | None:
        lane = self._lanes.get(run_id)
        return None if lane is None else lane.epoch

    async def commit(self, run_id: str, epoch: int, seq: int,
                     change: orch_store.Change) -> None:
        """Write transition ``seq`` once ``seq - 1`` is written."""
        lane = await self._turn(run_id, epoch, seq - 1)
        if lane.broken:
            raise Conflict(f"run {run_id}: {lane.broken}")
        if lane.committed >= seq:
            raise Conflict(f"run {run_id}: transition {seq} was already written")
        try:
            await self._writer.write(change)
        except NaosError as exc:
            lane.broken = f"transition {seq} failed: {exc}"
            lane.wake()
            raise
        lane.committed = seq
        lane.wake()
        if change.record is not None:
            if change.record.get("status") in lane.final:
                self.close(run_id, epoch)
            self._watchers.notify(run_id, change.record)

    async def reached(self, run_id: str, epoch: int, seq: int) -> None:
        """Return once transition ``seq`` is written.  Also at once when the
        lane is gone or newer (nothing of that epoch will be written any more)."""
        lane = self._lanes.get(run_id)
        if lane is None or lane.epoch != epoch:
            return
        await self._turn(run_id, epoch, seq)

    async def _turn(self, run_id: str, epoch: int, seq: int) -> _Lane:
        lane = self._lanes.get(run_id)
        if lane is None or lane.epoch != epoch:
            raise Conflict(f"run {run_id}: epoch {epoch} is not the run's current shell")
        try:
            async with asyncio.timeout(TURN_WAIT_S):
                while lane.committed < seq and not lane.broken:
                    await lane.changed.wait()
        except TimeoutError:
            raise Unavailable(f"run {run_id}: transition {seq} never came") from None
        if lane.broken and lane.committed < seq:
            raise Conflict(f"run {run_id}: {lane.broken}")
        return lane


class Watchers:
    """Futures woken with a run's record each time one is committed."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = defaultdict(list)

    def watch(self, run_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next record of ``run_id`` (register before reading)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[run_id].append(future)
        return future

    def forget(self, run_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        waiting = self._waiting.get(run_id)
        if waiting and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._waiting[run_id]

    def notify(self, run_id: str, record: dict[str, Any]) -> None:
        for future in self._waiting.pop(run_id, []):
            if not future.done():
                future.set_result(record)


def _save_changes(changes: list[Any], store: Any) -> list[Any]:
    return list(orch_store.save_changes(store, changes))
