"""The spender in process: a real SQLite store and ledger writer, a gate that
answers from a table, work that reports what it likes (a lying server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from actors.domain.budget import BudgetExceeded, BudgetPolicy
from actors.domain.trust import Decision, TrustDenied
from naosd.broker.cost import CostController
from naosd.broker.ledger_writer import LedgerWriter
from naosd.broker.spend import Charge, Charged, Spender, Spent
from naosd.errors import NaosError
from naosd.storage import ledger
from naosd.storage.db import AsyncStore

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class Gate:
    def __init__(self) -> None:
        self.denied: set[str] = set()

    async def evaluate(self, agent: str | None, cost_micro: int
                       ) -> tuple[Decision, dict[str, Any]]:
        if agent in self.denied:
            return Decision(False, "test says no", None, None, None, "no_record"), {"agent": agent}
        return Decision(True, "ok", None, None, None), {"agent": agent}


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Spender, AsyncStore, Gate]]:
    db = await AsyncStore.open(tmp_path / "naos.db", checkpoint=tmp_path / "audit.head",
                               synchronous="normal", busy_timeout_ms=1000)
    gate = Gate()
    cost = CostController()
    cost.set_budget("ann", BudgetPolicy(50_000, "day"), NOW)
    spender = Spender(gate, cost, LedgerWriter(db), now=lambda: NOW)
    try:
        yield spender, db, gate
    finally:
        await db.close()


def chat(want: int, floor: int | None = None) -> Charge:
    return Charge("llm", "test-model", want, "llm.chat", floor_micro=floor)


async def audit_types(db: AsyncStore) -> list[str]:
    rows = await db.call(lambda s: s.audit_tail(100))
    return [r.type for r in rows]


async def test_a_server_reporting_more_than_the_hold_is_charged_the_hold(world) -> None:
    spender, db, _ = world

    async def lying(granted: int) -> Spent:
        return Spent("text", 14_500_000, detail={"output_tokens": 100_000})  # 290x the hold

    _, receipt = await spender.charge("ann", chat(10_000), lying)
    assert (receipt.cost_micro, receipt.overrun_micro) == (10_000, 14_490_000)
    status = spender.cost.status_of("ann", NOW)
    assert status["spent_micro"] == 10_000 <= status["limit_micro"]
    assert "llm.usage_overrun" in await audit_types(db)
    entries = await db.call(lambda s: ledger.ledger_entries(s, "2000-01-01"))
    assert [(e["cost_micro"], e["reserved_micro"]) for e in entries] == [(10_000, 10_000)]


async def test_the_end_of_a_budget_is_granted_not_refused(world) -> None:
    spender, _, _ = world

    async def spend_all(granted: int) -> Spent:
        return Spent("x", granted)

    await spender.charge("ann", chat(45_000), spend_all)  # 5,000 left of 50,000
    seen: list[int] = []

    async def sized(granted: int) -> Spent:
        seen.append(granted)
        return Spent("x", granted)

    _, receipt = await spender.charge("ann", chat(20_000, floor=1_000), sized)
    assert seen == [5_000] and receipt.granted_micro == 5_000
    assert spender.cost.status_of("ann", NOW)["spent_micro"] == 50_000
    with pytest.raises(BudgetExceeded):  # nothing left above the floor
        await spender.charge("ann", chat(20_000, floor=1_000), sized)


async def test_a_denied_call_is_recorded_and_never_runs(world) -> None:
    spender, db, gate = world
    gate.denied.add("ann")
    ran: list[int] = []

    async def work(granted: int) -> Spent:
        ran.append(granted)
        return Spent("x", 1)

    with pytest.raises(TrustDenied):
        await spender.charge("ann", chat(100), work)
    assert ran == []
    assert {"trust.deny", "llm.denied"} <= set(await audit_types(db))


async def test_work_that_spent_then_failed_is_charged_what_it_spent(world) -> None:
    spender, _, _ = world

    async def trap(granted: int) -> Spent:
        raise Charged(700, NaosError("guest trapped"))

    with pytest.raises(NaosError, match="guest trapped"):
        await spender.charge("ann", chat(1_000), trap)
    status = spender.cost.status_of("ann", NOW)
    assert (status["spent_micro"], status["reserved_micro"]) == (700, 0)
