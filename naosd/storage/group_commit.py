"""Group commit: many writers' records, one transaction while the disk is busy.

Each caller queues its record and waits; one writer task commits whatever
queued while the previous commit was on disk.  A lone caller pays one
commit as before; under load N callers share one fsync instead of paying
one each.  A caller's :meth:`GroupCommit.write` returns only once its record
is committed (an acknowledged change is on disk); if a commit fails, every
caller of that batch gets the error.  A cancelled caller does not cancel
the others' commit.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore
    from naosd.storage.store import Store

T = TypeVar("T")
MAX_BATCH = 256


class GroupCommit(Generic[T]):
    def __init__(self, db: AsyncStore, write: Callable[[Store, list[T]], None]) -> None:
        self._db = db
        self._write = write
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0

    async def write(self, record: T) -> None:
        """Queue ``record``; return once it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            records = [r for r, _ in batch]
            try:
                await self._db.call(functools.partial(_apply, self._write, records))
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of the batch
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            self.batches += 1
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            await self._db.notify()


def _apply(write: Callable[[Store, list[T]], None], records: list[T], store: Store) -> None:
    write(store, records)
