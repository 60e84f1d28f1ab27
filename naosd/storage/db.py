"""The daemon's asyncio face of :class:`naosd.storage.store.Store`.

SQLite has one owner thread: every Store call runs on a single-thread
executor, so the event loop never blocks on disk and apsw never sees two
threads at once.  Audit appends wake the followers of ``audit tail -f``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from naosd.storage.audit import AuditRow
from naosd.storage.origin import stamp
from naosd.storage.store import Store

T = TypeVar("T")
C = TypeVar("C")


class AsyncStore:
    def __init__(self, store: Store, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self._changed = asyncio.Condition()

    @classmethod
    async def open(
        cls, db: Path, *, checkpoint: Path, synchronous: str, busy_timeout_ms: int
    ) -> AsyncStore:
        executor = ThreadPoolExecutor(1, thread_name_prefix="naos-store")
        opener = functools.partial(
            Store.open, db, checkpoint_path=checkpoint, synchronous=synchronous,
            busy_timeout_ms=busy_timeout_ms,
        )
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, opener)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def call(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._store)

    async def audit(
        self, type_: str, *, actor: str = "naosd", agent: str | None = None,
        **detail: Any,
    ) -> AuditRow:
        detail = stamp(detail)  # on the loop: the caller's origin (naosd.storage.origin)
        row = await self.call(
            lambda s: s.append_audit(type_, actor=actor, agent=agent, detail=detail)
        )
        await self.notify()
        return row

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_changed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return when an audit row was appended here, or after ``timeout``
        (rows written by other processes are found by the caller's poll)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def follow(
        self, fetch: Callable[[Store, C], tuple[list[T], C]], last: C,
        *, poll_s: float = 0.5,
    ) -> AsyncIterator[list[T]]:
        """Stream what ``fetch(store, last) -> (items, new_last)`` finds, for
        ever: each non-empty batch as it comes, and an empty list after every
        wait that found nothing (callers may send heartbeats then).  Wakes on
        appends made here, and polls every ``poll_s`` for other processes'."""
        while True:
            batch, last = await self.call(lambda s, after=last: fetch(s, after))
            if batch:
                yield batch
                continue
            await self.wait_changed(poll_s)
            yield []

    async def close(self) -> None:
        await self.call(lambda s: s.close())
        self._executor.shutdown(wait=True)
