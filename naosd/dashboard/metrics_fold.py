"""What the audit log says, as metric updates: the pure half of ``/metrics``.

naosd's audit log already records every event an operator counts (agent runs
with their time, crashes, restarts and give-ups, broker tasks with route,
handler, outcome and cost, trust decisions, saga and workflow transitions,
pool fan-outs, WASM runs with their fuel), rows written by actor processes
included.  So the counters and histograms are a fold over that stream:
:func:`fold` takes one row and returns what to add (:class:`Update`);
:mod:`naosd.dashboard.metrics_feed` follows the table and applies the
updates to prometheus-client metrics.  A step's duration needs the time its
attempt started: the fold keeps the open attempts in :class:`OpenSteps`, the
one piece of memory it has, updated in place (a frozen copy per row cost
O(open attempts) a row: 1 s for 10,000 sagas in flight).

Every family is declared once, in :data:`FAMILIES`.  Label values come from
bounded sets only: registered names (agents, supervisors, sagas, workflows,
steps, pools, skills, models), error codes and fixed words; never a run id,
a task id or free text.  A field that does not have the shape its row type
promises gives no update (or the label ``other``; so does an error code that
is not in naos' error table), and a row of a type not listed here gives
none: :func:`fold` never raises.

Stdlib and naos' error table only: no prometheus-client, no I/O, no clock (a duration comes from
the rows' own times).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

from naosd.errors import ERRORS_BY_CODE

COUNTER: Final = "counter"
HISTOGRAM: Final = "histogram"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as scraped: counters end in ``_total``, times in ``_seconds``."""

    name: str
    kind: str  # COUNTER or HISTOGRAM
    labels: tuple[str, ...]
    help: str


FAMILIES: Final[dict[str, Family]] = {f.name: f for f in (
    Family("naos_agent_runs_total", COUNTER, ("agent", "outcome"),
           "Messages run by each agent (agent.run rows); outcome is ok or the error code"),
    Family("naos_agent_run_duration_seconds", HISTOGRAM, ("agent",),
           "Handler time of each agent's successful runs"),
    Family("naos_child_crashes_total", COUNTER, ("kind", "name", "supervisor"),
           "Abnormal exits of supervised agents and supervisors"),
    Family("naos_child_restarts_total", COUNTER, ("kind", "name", "supervisor"),
           "Restarts of agents and supervisors by their supervisor (root for top-level ones)"),
    Family("naos_crash_loops_total", COUNTER, ("supervisor", "child"),
           "Supervisors that gave up: more restarts than their intensity allows; "
           "child is the one whose exit tipped it"),
    Family("naos_broker_tasks_total", COUNTER, ("route", "handler", "outcome"),
           "Broker tasks by route and handler; outcome is ok or the error code "
           "(refused ones too: no_route, trust_denied, budget_exceeded, ...)"),
    Family("naos_spend_micro_usd_total", COUNTER, ("agent", "route"),
           "Micro-dollars settled on the ledger by paying agent (empty: the operator) "
           "and route"),
    Family("naos_trust_decisions_total", COUNTER, ("decision", "code"),
           "Trust gate decisions (allow or deny) by reason code"),
    Family("naos_orchestration_runs_started_total", COUNTER, ("kind", "name"),
           "Saga and workflow runs started, by definition"),
    Family("naos_orchestration_runs_finished_total", COUNTER, ("kind", "name", "outcome"),
           "Saga and workflow runs that reached a final state: completed, failed, "
           "compensated or compensation_failed"),
    Family("naos_orchestration_steps_total", COUNTER, ("kind", "name", "step", "outcome"),
           "Step attempts that ended: succeeded, retrying, failed or skipped"),
    Family("naos_orchestration_step_duration_seconds", HISTOGRAM, ("kind", "name", "step"),
           "Time from a step attempt's start to its success"),
    Family("naos_saga_compensations_total", COUNTER, ("saga", "step", "outcome"),
           "Saga compensations: compensated, retrying, failed or skipped"),
    Family("naos_pool_fanouts_total", COUNTER, ("pool", "status"),
           "Pool fan-outs (pool.run) by merged status: completed, partial or failed"),
    Family("naos_pool_fanout_duration_seconds", HISTOGRAM, ("pool",),
           "Time a pool fan-out took to decide"),
    Family("naos_wasm_runs_total", COUNTER, ("outcome",),
           "WASM modules run with naosctl wasm run: ok or nonzero_exit"),
    Family("naos_wasm_run_duration_seconds", HISTOGRAM, (),
           "Wall time of the WASM runs of naosctl wasm run"),
    Family("naos_wasm_fuel_total", COUNTER, ("source", "skill"),
           "WASM fuel burned: source run (naosctl wasm run) or skill (a broker "
           "task on a WASM skill, named)"),
)}

SPEND_TYPES: Final = frozenset({"broker.execute", "llm.chat", "tool.call"})
"""The spender's call rows (naosd/broker/spend.py): each carries route and cost_micro."""
RUN_FINAL: Final = frozenset({"completed", "failed", "compensated", "compensation_failed",
                             "cancelled"})
STEP_ENDS: Final = {"step_succeeded": "succeeded", "step_retrying": "retrying",
                    "step_failed": "failed", "step_skipped": "skipped"}
UNDO_ENDS: Final = {"compensated_step": "compensated", "compensation_retrying": "retrying",
                    "compensation_failed_step": "failed", "compensation_skipped": "skipped"}
MAX_OPEN_RUNS: Final = 10_000
"""Runs whose open attempts are remembered at most (the oldest run's are
forgotten first: those attempts get no duration)."""
OTHER: Final = "other"
_LABEL: Final = re.compile(r"[A-Za-z0-9_.:/@+-]{1,64}")


class Row(Protocol):
    """The fields of :class:`naosd.storage.audit.AuditRow` the fold reads."""

    @property
    def ts(self) -> str: ...

    @property
    def agent(self) -> str | None: ...

    @property
    def type(self) -> str: ...

    @property
    def detail(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Update:
    """Add ``value`` to a counter, or observe it in a histogram."""

    name: str  # a key of FAMILIES
    labels: tuple[str, ...]  # in the family's label order
    value: float = 1.0


class OpenSteps:
    """Step attempts started and not ended yet, by run: when each started
    (seconds since the epoch)."""

    __slots__ = ("_runs",)

    def __init__(self) -> None:
        self._runs: dict[tuple[str, str], dict[tuple[str, int], float]] = {}

    def __len__(self) -> int:
        return sum(len(steps) for steps in self._runs.values())

    def runs(self) -> list[tuple[str, str]]:
        """(kind, run id) of the runs with open attempts, the oldest first."""
        return list(self._runs)

    def start(self, kind: str, run_id: str, step: str, attempt: int, at: float) -> None:
        run = self._runs.pop((kind, run_id), {})  # re-inserted: now the newest run
        run[(step, attempt)] = at
        self._runs[(kind, run_id)] = run
        while len(self._runs) > MAX_OPEN_RUNS:
            del self._runs[next(iter(self._runs))]

    def end(self, kind: str, run_id: str, step: str, attempt: int) -> float | None:
        """When the attempt started (None: not known), forgetting it."""
        run = self._runs.get((kind, run_id))
        if run is None:
            return None
        begun = run.pop((step, attempt), None)
        if not run:
            del self._runs[(kind, run_id)]
        return begun

    def forget(self, kind: str, run_id: str) -> None:
        self._runs.pop((kind, run_id), None)


def fold(steps: OpenSteps, row: Row) -> list[Update]:
    """The updates ``row`` makes (``steps`` is kept up to date)."""
    detail = row.detail if isinstance(row.detail, dict) else {}
    type_ = row.type if isinstance(row.type, str) else ""
    kind, _, verb = type_.partition(".")
    if kind in ("saga", "workflow"):
        return _orchestration(steps, kind, verb, row.ts, detail)
    handler = _HANDLERS.get(type_)
    return handler(row, detail) if handler is not None else []


# -- labels and values ------------------------------------------------------------------


def label(value: Any, missing: str = "") -> str:
    """``value`` if it is a short name-like string; ``missing`` for None; else ``other``."""
    if value is None:
        return missing
    if isinstance(value, str) and _LABEL.fullmatch(value):
        return value
    return OTHER


def _number(value: Any) -> float | None:
    """A finite number >= 0 (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past float's range (JSON has no limit)
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds(ms: Any) -> float | None:
    number = _number(ms)
    return None if number is None else number / 1000.0


def error_code(value: Any) -> str:
    """A code of naos' error table; ``error`` when absent, ``other`` for anything
    else (a code that varied per run would grow a series per run)."""
    if value is None:
        return "error"
    return value if isinstance(value, str) and value in ERRORS_BY_CODE else OTHER


def _outcome(ok: bool, error: Any) -> str:
    return "ok" if ok else error_code(error)


def _epoch(ts: Any) -> float | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts).timestamp()
    except (ValueError, OverflowError):  # not a time, or one out of range
        return None


def _up(name: str, *labels: str, value: float = 1.0) -> Update:
    return Update(name, labels, value)


# -- agents and supervision ---------------------------------------------------------------


def _agent_run(row: Row, d: dict[str, Any]) -> list[Update]:
    agent, ok = label(row.agent), d.get("ok") is True
    out = [_up("naos_agent_runs_total", agent, _outcome(ok, d.get("error")))]
    seconds = _seconds(d.get("ms"))
    if ok and seconds is not None:  # a failed run's ms is 0 or absent: not a duration
        out.append(_up("naos_agent_run_duration_seconds", agent, value=seconds))
    return out


def _child(row: Row, d: dict[str, Any]) -> tuple[str, str, str]:
    """kind, name, supervisor of a supervision row (the root's rows name ``child``)."""
    kind = row.type.partition(".")[0]
    return kind, label(d.get("name", d.get("child"))), label(d.get("supervisor"), "root")


def _crashed(row: Row, d: dict[str, Any]) -> list[Update]:
    return [_up("naos_child_crashes_total", *_child(row, d))]


def _restarted(row: Row, d: dict[str, Any]) -> list[Update]:
    """One row per restart: the child's own exit (``cause`` is its name, not a
    sibling's) counts as its crash too; a restarted crash writes no
    ``.crashed`` row of its own."""
    ups = [_up("naos_child_restarts_total", *_child(row, d))]
    if d.get("name") is not None and d.get("cause") == d.get("name"):
        ups.append(_up("naos_child_crashes_total", *_child(row, d)))
    return ups


def _gave_up(row: Row, d: dict[str, Any]) -> list[Update]:
    return [_up("naos_crash_loops_total", label(d.get("supervisor")), label(d.get("child")))]


def _failed(row: Row, d: dict[str, Any]) -> list[Update]:
    """A child its supervisor stopped restarting (a crash loop ended failed):
    the last crash, and a crash loop of that child."""
    return [_up("naos_child_crashes_total", *_child(row, d)),
            _up("naos_crash_loops_total", label(d.get("supervisor"), "root"),
                label(d.get("name")))]


# -- the request path -----------------------------------------------------------------------


def _charged(row: Row, d: dict[str, Any]) -> list[Update]:
    """A call the spender settled: spend, and for broker tasks the task and its fuel."""
    route = label(d.get("route"), "none")
    out = []
    cost = _number(d.get("cost_micro"))
    if cost:
        out.append(_up("naos_spend_micro_usd_total", label(row.agent), route, value=cost))
    if row.type == "broker.execute":
        outcome = _outcome(d.get("status") == "ok", d.get("error"))
        handler = label(d.get("handler"), "none")
        out.append(_up("naos_broker_tasks_total", route, handler, outcome))
        fuel = _number(d.get("fuel_used"))
        if route == "wasm" and fuel:
            out.append(_up("naos_wasm_fuel_total", "skill", handler, value=fuel))
    return out


def _denied(row: Row, d: dict[str, Any]) -> list[Update]:
    return [_up("naos_broker_tasks_total", label(d.get("route"), "none"),
                label(d.get("handler"), "none"), error_code(d.get("error")))]


def _trust(row: Row, d: dict[str, Any]) -> list[Update]:
    decision = "allow" if row.type == "trust.allow" else "deny"
    return [_up("naos_trust_decisions_total", decision, label(d.get("code"), "none"))]


def _wasm_run(row: Row, d: dict[str, Any]) -> list[Update]:
    outcome = "ok" if d.get("exit_code") == 0 else "nonzero_exit"
    out = [_up("naos_wasm_runs_total", outcome)]
    seconds = _seconds(d.get("wall_ms"))
    if seconds is not None:
        out.append(_up("naos_wasm_run_duration_seconds", value=seconds))
    fuel = _number(d.get("fuel"))
    if fuel:
        out.append(_up("naos_wasm_fuel_total", "run", "", value=fuel))
    return out


# -- pools ---------------------------------------------------------------------------------------


def _pool_run(row: Row, d: dict[str, Any]) -> list[Update]:
    pool = label(d.get("pool"))
    status = "failed" if row.type == "pool.run_failed" else label(d.get("status"), OTHER)
    out = [_up("naos_pool_fanouts_total", pool, status)]
    seconds = _seconds(d.get("ms"))
    if seconds is not None:
        out.append(_up("naos_pool_fanout_duration_seconds", pool, value=seconds))
    return out


_HANDLERS: Final[dict[str, Callable[[Row, dict[str, Any]], list[Update]]]] = {
    "agent.run": _agent_run,
    "agent.crashed": _crashed, "supervisor.crashed": _crashed,
    "agent.restarted": _restarted, "supervisor.restarted": _restarted,
    "supervisor.gave_up": _gave_up,
    "agent.failed": _failed, "supervisor.failed": _failed,
    **dict.fromkeys(SPEND_TYPES, _charged),
    "broker.denied": _denied,
    "trust.allow": _trust, "trust.deny": _trust,
    "wasm.run": _wasm_run,
    "pool.run": _pool_run, "pool.run_failed": _pool_run,
}


# -- sagas and workflows ------------------------------------------------------------------------


def _orchestration(steps: OpenSteps, kind: str, verb: str, ts: str, d: dict[str, Any]
                   ) -> list[Update]:
    name, run_id = label(d.get(kind)), d.get("run_id")
    if not isinstance(run_id, str):
        return []  # definitions (saga.defined, ...) carry no run
    if verb == "started":
        return [_up("naos_orchestration_runs_started_total", kind, name)]
    if verb in RUN_FINAL or verb == "timed_out":
        steps.forget(kind, run_id)  # its open attempts will never end
        if verb == "timed_out":
            return []
        return [_up("naos_orchestration_runs_finished_total", kind, name, verb)]
    return _step(steps, kind, name, run_id, verb, ts, d)


def _step(steps: OpenSteps, kind: str, name: str, run_id: str, verb: str, ts: str,
          d: dict[str, Any]) -> list[Update]:
    step, attempt = label(d.get("step")), d.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return []
    if verb == "step_started":
        begun = _epoch(ts)
        if begun is not None:
            steps.start(kind, run_id, step, attempt, begun)  # a re-sent attempt: again
        return []
    if verb in STEP_ENDS:
        outcome = STEP_ENDS[verb]
        out = [_up("naos_orchestration_steps_total", kind, name, step, outcome)]
        begun, end = steps.end(kind, run_id, step, attempt), _epoch(ts)
        # begun None: started before naosd did (or forgotten): no duration
        if outcome == "succeeded" and begun is not None and end is not None and end >= begun:
            out.append(_up("naos_orchestration_step_duration_seconds", kind, name, step,
                           value=end - begun))
        return out
    if verb in UNDO_ENDS and kind == "saga":
        return [_up("naos_saga_compensations_total", name, step, UNDO_ENDS[verb])]
    return []
