"""One charged call, in the order naos promises: trust gate, reserve, work,
settle, record.

The broker's tasks and the agent API's LLM and tool calls all pass through
:meth:`Spender.charge`, so each is gated, bounded and audited the same way:

1. the trust gate decides for the paying agent (a deny is recorded and raised);
2. the cost controller holds the call's reservation on the agent's and the
   global budget; with a ``floor`` the hold shrinks to what a pausing budget
   has left, and the work is told how much it was granted, so it sizes
   itself to it (``max_tokens``, fuel): **a call cannot cost more than it
   reserved**;
3. the work runs;
4. it is settled at what it reports, capped at the hold: a report above the
   hold (a server claiming more tokens than it was allowed) is recorded as
   an overrun event, never as spend;
5. the ledger row, the changed budgets, the trust decision and the call's
   audit row are one transaction (group-committed by the ledger writer).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from actors.domain.trust import Decision
from naosd.broker import spans
from naosd.broker.cost import CostController, Event, Hold
from naosd.broker.ledger_writer import LedgerWriter
from naosd.errors import NaosError, TrustDenied
from naosd.storage import ledger as bs
from naosd.storage.origin import stamp


class TrustCheck(Protocol):
    """:class:`naosd.broker.trust_gate.TrustGate`: the decision and its audit
    detail, not audited (the decision's row is written with the call's)."""

    async def evaluate(self, agent: str | None, cost_micro: int
                       ) -> tuple[Decision, dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Charge:
    """What a call is, for the gate and the ledger."""

    kind: str  # the ledger's route kind: skill, wasm, llm, tool
    handler: str  # skill, model or tool name
    want_micro: int  # the most it may cost: its reservation
    audit_type: str  # the call's audit row: broker.execute, llm.chat, tool.call
    floor_micro: int | None = None  # shrink down to this when a budget is nearly spent
    estimate_micro: int = 0  # what the task would cost on the LLM (broker stats)
    detail: dict[str, Any] = field(default_factory=dict)
    task_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True, slots=True)
class Spent:
    """What the work returned and what it says it cost."""

    result: Any
    cost_micro: int
    estimated: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    estimate_micro: int | None = None  # replaces the charge's (the LLM route knows better)


class Charged(Exception):
    """Raised by work that ran and spent ``cost_micro``, then failed."""

    def __init__(self, cost_micro: int, error: NaosError) -> None:
        super().__init__(error.message)
        self.cost_micro = cost_micro
        self.error = error


@dataclass(frozen=True, slots=True)
class Receipt:
    task_id: str
    granted_micro: int
    cost_micro: int
    verdict: str
    overrun_micro: int = 0


Work = Callable[[int], Awaitable[Spent]]


class Spender:
    def __init__(self, gate: TrustCheck, cost: CostController, writer: LedgerWriter,
                 now: Callable[[], datetime] | None = None) -> None:
        self.gate = gate
        self.cost = cost
        self.writer = writer
        self._now = now or (lambda: datetime.now(UTC))

    async def charge(self, agent: str | None, charge: Charge, work: Work
                     ) -> tuple[Spent, Receipt]:
        """Run ``work(granted_micro)`` behind the gates; see the module docstring.

        Raises whatever denied it (``trust_denied``, ``budget_exceeded``,
        ``budget_throttled``) or whatever the work raised, after recording it.
        """
        with spans.open_span(agent, charge) as span:
            spent, receipt = await self._charge(agent, charge, work)
            spans.settled(span, spent, receipt)
            return spent, receipt

    async def _charge(self, agent: str | None, charge: Charge, work: Work
                      ) -> tuple[Spent, Receipt]:
        trust: Event | None = None
        try:
            verdict, detail = await self.gate.evaluate(agent, charge.want_micro)
            trust = Event("trust.allow" if verdict.allow else "trust.deny", agent,
                          {**detail, "task_id": charge.task_id}, actor="trust")
            if not verdict.allow:
                raise TrustDenied(verdict.reason)
            hold = self.cost.reserve(agent, charge.want_micro, self._now(),
                                     floor=charge.floor_micro)
        except NaosError as exc:
            await self.deny(agent, charge, exc, trust)
            raise
        return await self._run(agent, charge, work, hold, verdict, trust)

    async def _run(self, agent: str | None, charge: Charge, work: Work, hold: Hold,
                   verdict: Decision, trust: Event | None) -> tuple[Spent, Receipt]:
        try:
            spent = await work(hold.amount)
        except Charged as charged:
            cost = min(charged.cost_micro, hold.amount)
            self.cost.settle(hold, cost, self._now())
            await self._record(agent, charge, hold, cost, "failed",
                               {"error": charged.error.code}, trust)
            raise charged.error from None
        except BaseException as exc:
            self.cost.release(hold)
            code = exc.code if isinstance(exc, NaosError) else "internal"
            await self._record(agent, charge, hold, 0, "failed", {"error": code}, trust)
            raise
        cost = min(spent.cost_micro, hold.amount)
        overrun = spent.cost_micro - cost
        extra: list[Event] = []
        if overrun > 0:
            extra.append(Event(f"{charge.kind}.usage_overrun", agent, {
                "task_id": charge.task_id, "handler": charge.handler,
                "reserved_micro": hold.amount, "reported_micro": spent.cost_micro,
                "charged_micro": cost, **spent.detail}, actor=charge.kind))
        self.cost.settle(hold, cost, self._now())
        estimate = charge.estimate_micro if spent.estimate_micro is None else spent.estimate_micro
        await self._record(agent, charge, hold, cost, "ok",
                           {"trust": verdict.code, **spent.detail}, trust,
                           estimated=spent.estimated, estimate=estimate, events=tuple(extra))
        return spent, Receipt(charge.task_id, hold.amount, cost, verdict.code, overrun)

    async def _record(self, agent: str | None, charge: Charge, hold: Hold, cost: int,
                      status: str, outcome: dict[str, Any], trust: Event | None, *,
                      estimated: bool = False, estimate: int | None = None,
                      events: tuple[Event, ...] = ()) -> None:
        entry = bs.LedgerEntry(charge.task_id, agent, charge.kind, charge.handler, status,
                               hold.amount, cost,
                               charge.estimate_micro if estimate is None else estimate,
                               estimated)
        audit = Event(charge.audit_type, agent, {
            "task_id": charge.task_id, "route": charge.kind, "handler": charge.handler,
            "status": status, "cost_micro": cost, "reserved_micro": hold.amount,
            **charge.detail, **outcome})
        await self.write(entry, audit, trust, events)

    async def deny(self, agent: str | None, charge: Charge | None, exc: Exception,
                   trust: Event | None = None, *, task_id: str | None = None,
                   audit_type: str = "broker.denied") -> None:
        """Record a call refused before it ran (no route, trust, budget)."""
        code = exc.code if isinstance(exc, NaosError) else "internal"
        message = exc.message if isinstance(exc, NaosError) else str(exc)
        audit = Event(audit_type if charge is None else _denied(charge.audit_type), agent, {
            "task_id": charge.task_id if charge is not None else task_id,
            "error": code, "reason": message[:500],
            "route": charge.kind if charge else None,
            "handler": charge.handler if charge else None,
            **(charge.detail if charge else {})})
        await self.write(None, audit, trust)

    async def write(self, entry: bs.LedgerEntry | None, audit: Event | None,
                    trust: Event | None = None, extra: tuple[Event, ...] = ()) -> None:
        """Persist ``entry``, ``audit`` and whatever the cost controller changed."""
        events, budgets = self.cost.drain()  # not stamped: they may be other calls' events
        audit = None if audit is None else replace(audit, detail=stamp(audit.detail))
        first = (replace(trust, detail=stamp(trust.detail)),) if trust is not None else ()
        await self.writer.write(bs.Record((*first, *extra, *events), tuple(budgets), entry,
                                          audit))


def _denied(audit_type: str) -> str:
    """``broker.execute`` -> ``broker.denied``; ``llm.chat`` -> ``llm.denied``."""
    return audit_type.split(".", 1)[0] + ".denied"
