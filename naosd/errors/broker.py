"""Errors of the request path: routing, skills, budgets and the trust gate (a
leaf module: stdlib only, collected by ``naosd.errors``)."""

from __future__ import annotations

from typing import Any, ClassVar

from naosd.errors.core import NaosError


class NoRoute(NaosError):
    """No skill clears its threshold and no LLM is configured: nothing can take the task.

    ``decision`` (when known) is the ``actors.domain.routing.RouteDecision`` with the
    scored candidates for ``explain()`` (typed Any: this leaf imports nothing of naos)."""

    code: ClassVar[str] = "no_route"

    def __init__(self, message: str, decision: Any = None) -> None:
        super().__init__(message)
        self.decision = decision


class SkillFailed(NaosError):
    """The chosen skill could not do the task (bad input for it; a WASM skill exited non-zero).

    Unlike ``no_route``, a handler was found."""

    code: ClassVar[str] = "skill_failed"


class BudgetExceeded(NaosError):
    """A pausing budget would pass its limit, or is paused.

    Unlike ``Conflict`` (a misuse of the ledger), this is the budget doing its job.
    ``outcome`` (an ``actors.domain.budget.Outcome``, or None) is the budget's state
    after the refusal and its events, for the caller to keep and persist."""

    code: ClassVar[str] = "budget_exceeded"

    def __init__(self, message: str, outcome: Any = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class Throttled(NaosError):
    """A throttling budget is over its limit and its token bucket is empty: retry later.

    Unlike ``budget_exceeded`` (pause), the task may run once a token is back."""

    code: ClassVar[str] = "budget_throttled"


class TrustDenied(NaosError):
    """The trust gate refused the task.

    Unlike ``PermissionDenied`` this is about the agent's AXIS standing, not the
    caller's credentials."""

    code: ClassVar[str] = "trust_denied"
