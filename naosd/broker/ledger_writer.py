"""Group commit for the request path: every finished task's record (ledger row,
budgets, audit rows) goes through one :class:`~naosd.storage.group_commit.GroupCommit`,
so concurrent tasks share one transaction and one fsync."""

from __future__ import annotations

from typing import TYPE_CHECKING

from naosd.storage import ledger as bs
from naosd.storage.group_commit import GroupCommit

if TYPE_CHECKING:
    from naosd.storage.db import AsyncStore


class LedgerWriter(GroupCommit[bs.Record]):
    def __init__(self, db: AsyncStore) -> None:
        super().__init__(db, lambda store, records: bs.record(store, records))
