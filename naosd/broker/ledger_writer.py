"""Group commit for the request path: every finished task's record (ledger row,
budgets, audit rows) is queued here, and one writer task commits whatever has
queued up in one transaction while the previous commit was on disk.

A lone task pays one commit as before; under load N tasks share one fsync
instead of paying one each. A caller's ``write`` returns only once its record is
committed (an acknowledged task is on disk); if the commit fails, every caller
of that batch gets the error.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from naosd.storage import ledger as bs

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore

MAX_BATCH = 256


class LedgerWriter:
    def __init__(self, db: AsyncStore) -> None:
        self._db = db
        self._queue: list[tuple[bs.Record, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, record: bs.Record) -> None:
        """Queue ``record``; return once it is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(done)  # a cancelled caller does not cancel the others' commit

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            records = [r for r, _ in batch]
            try:
                await self._db.call(lambda s, rs=records: bs.record(s, rs))
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of the batch
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            await self._db.notify()
