"""Saga, workflow and pool definitions as stored and as written in naos.toml (pure).

A saga or workflow is built as a *draft* (a JSON-able dict, created empty and
given steps one by one); every builder validates through the pure specs, so
a draft that is stored is one :func:`saga_spec` / :func:`workflow_spec` can
run.  The API (``saga.create``, ``saga.add_step``, ...) and project files use
the same builders, so both refuse the same things with the same messages.

naos.toml::

    [sagas.order]
    timeout = 300                 # seconds for the whole saga
    step_timeout = 60
    recovery = "forward"          # or "compensate": roll back after a crash
    compensation_attempts = 3
    compensation_delay = 1
    compensate_in_doubt = true    # a failed step that timed out is compensated too
    steps = [{ name = "reserve", agent = "inventory", compensate = "inventory-release" }]

    [[sagas.order.steps]]         # or one table per step
    name = "charge"
    agent = "payment"
    compensate = "payment-refund"
    attempts = 3                  # retry policy: attempts, retry_delay, backoff, max_delay
    non_retryable = ["declined"]  # error codes that compensate at once

    [[sagas.order.steps]]         # a person decides: naosctl approve / reject RUN
    name = "approve"
    approval = true
    timeout = 86400               # seconds to wait (default a day, at most 366 days)
    on_timeout = "escalate"       # or "reject" (default): see actors/domain/saga.py

    [workflows.etl]
    on_error = "stop"             # skip, retry
    retries = 3
    retry_delay = 5
    steps = [{ name = "fetch", agent = "fetcher", on_error = "retry", retries = 5 },
             { name = "review", approval = true, timeout = 3600 }]

    [pools.summarize]
    agents = ["a", "b", "c"]      # or: agent = "a", size = 4
    merge = "majority"            # all, first, quorum:K, reducer (with reducer = "agent")
    pick = "round-robin"          # queue mode: or least-busy
"""

from __future__ import annotations

import math
from typing import Any, Final

from actors.domain import pool as pool_m
from actors.domain import saga as saga_m
from actors.domain import workflow as wf_m
from actors.domain.definitions import validate_name
from naosd.errors import ConfigError, Conflict, InvalidRequest

MAX_SECONDS: Final = 86400.0  # a day: the longest any timeout or wait may be
APPROVAL_DEFAULT_S: Final = 86400.0  # how long an approval waits unless told
APPROVAL_MAX_S: Final = 366 * 86400.0  # a person's decision may take long: a bound, no cap
SAGA_STEP_KEYS: Final = frozenset({"name", "agent", "compensate", "timeout", "attempts",
                                   "retry_delay", "backoff", "max_delay", "non_retryable"})
SAGA_KEYS: Final = frozenset({"timeout", "step_timeout", "recovery", "compensation_attempts",
                              "compensation_delay", "compensate_in_doubt", "steps"})
WF_STEP_KEYS: Final = frozenset({"name", "agent", "timeout", "on_error", "retries",
                                 "retry_delay"})
APPROVAL_KEYS: Final = frozenset({"name", "approval", "timeout", "on_timeout"})
WF_KEYS: Final = frozenset({"on_error", "retries", "retry_delay", "step_timeout", "steps"})
POOL_KEYS: Final = frozenset({"agents", "agent", "size", "merge", "reducer", "pick",
                              "concurrency", "timeout"})


def seconds(value: Any, what: str, *, zero_ok: bool = False, hi: float = MAX_SECONDS) -> float:
    """``value`` as seconds within (0 or >0) .. ``hi``; raises InvalidRequest."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{what} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok) or value > hi:
        low = ">= 0" if zero_ok else "> 0"
        raise InvalidRequest(f"{what} must be {low} and at most {hi:.15g} seconds, got {value!r}")
    return float(value)


# -- sagas ------------------------------------------------------------------------------


def saga_draft(name: str, *, timeout: Any = 3600.0, step_timeout: Any = 60.0,
               recovery: Any = "forward", compensation_attempts: Any = 3,
               compensation_delay: Any = 1.0, compensate_in_doubt: Any = True
               ) -> dict[str, Any]:
    validate_name(name, "saga")
    if recovery not in saga_m.RECOVERY_MODES:
        raise InvalidRequest(f"recovery must be forward or compensate, got {recovery!r}")
    if not isinstance(compensate_in_doubt, bool):
        raise InvalidRequest(
            f"compensate_in_doubt must be true or false, got {compensate_in_doubt!r}")
    retry = saga_m.RetryPolicy(
        attempts=compensation_attempts,
        initial_s=seconds(compensation_delay, "compensation_delay", zero_ok=True))
    return {"name": name, "steps": [], "timeout_s": seconds(timeout, "timeout"),
            "step_timeout_s": seconds(step_timeout, "step_timeout"), "recovery": recovery,
            "compensation_retry": retry.to_dict(), "compensate_in_doubt": compensate_in_doubt}


def approval_timeout(timeout: Any) -> float:
    """An approval's wait: a day unless told, at most :data:`APPROVAL_MAX_S`."""
    if timeout is None:
        return APPROVAL_DEFAULT_S
    return seconds(timeout, "approval timeout", hi=APPROVAL_MAX_S)


def _approval_step(draft: dict[str, Any], step: str, kind: str, timeout: Any,
                   on_timeout: Any) -> dict[str, Any]:
    """The spec fields of approval step ``step`` (a person decides it: no agent)."""
    validate_name(step, "step")
    if any(s["name"] == step for s in draft["steps"]):
        raise Conflict(f"{kind} {draft['name']!r} already has a step {step!r}")
    return {"name": step, "agent": "", "kind": "approval",
            "timeout_s": approval_timeout(timeout), "on_timeout": on_timeout or "reject"}


def _agent_step(step: str, agent: str | None, on_timeout: Any) -> str:
    """The agent of step ``step`` (an agent's step: it needs one)."""
    validate_name(step, "step")
    if agent is None:
        raise InvalidRequest(f"step {step!r} needs an agent (or is an approval step)")
    if on_timeout is not None:
        raise InvalidRequest(f"step {step!r}: on_timeout is for approval steps")
    return validate_name(agent)


def saga_add_step(draft: dict[str, Any], step: str, agent: str | None, *,
                  compensate: str | None = None, timeout: Any = None, attempts: Any = 1,
                  retry_delay: Any = 1.0, backoff: Any = 2.0, max_delay: Any = 30.0,
                  non_retryable: Any = (), approval: bool = False, on_timeout: Any = None
                  ) -> dict[str, Any]:
    """``draft`` with one more step (a new dict); raises InvalidRequest or Conflict.
    An ``approval`` step names no agent and no compensation; ``timeout`` is
    its wait and ``on_timeout`` (reject, escalate) what ends it."""
    if approval:
        if agent or compensate:
            raise InvalidRequest(f"approval step {step!r}: a person decides it, "
                                 "it names no agent and no compensation")
        spec_fields = _approval_step(draft, step, "saga", timeout, on_timeout)
        spec = saga_m.StepSpec(**spec_fields)
        new = {**draft, "steps": [*draft["steps"], spec.to_dict()]}
        saga_spec(new)
        return new
    agent = _agent_step(step, agent, on_timeout)
    if compensate is not None:
        validate_name(compensate)
    codes = list(non_retryable or ())
    if not all(isinstance(c, str) and c for c in codes):
        raise InvalidRequest("non_retryable must be a list of error codes")
    if any(s["name"] == step for s in draft["steps"]):
        raise Conflict(f"saga {draft['name']!r} already has a step {step!r}")
    limit = draft["step_timeout_s"] if timeout is None else timeout
    retry = saga_m.RetryPolicy(attempts=attempts,
                               initial_s=seconds(retry_delay, "retry_delay", zero_ok=True),
                               backoff=backoff, max_s=seconds(max_delay, "max_delay",
                                                              zero_ok=True),
                               non_retryable=frozenset(codes))
    spec = saga_m.StepSpec(step, agent, compensate, seconds(limit, "step timeout"), retry)
    new = {**draft, "steps": [*draft["steps"], spec.to_dict()]}
    saga_spec(new)
    return new


def saga_spec(draft: dict[str, Any]) -> saga_m.SagaSpec:
    """The runnable spec of a saga draft (raises InvalidRequest)."""
    try:
        return saga_m.SagaSpec.from_dict({k: draft[k] for k in (
            "name", "steps", "timeout_s", "recovery", "compensation_retry")}
            | {"compensate_in_doubt": draft.get("compensate_in_doubt", True)})
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(f"saga {draft.get('name')!r}: bad definition: {exc}") from None


# -- workflows --------------------------------------------------------------------------


def workflow_draft(name: str, *, on_error: Any = "stop", retries: Any = 0,
                   retry_delay: Any = 0.0, step_timeout: Any = 60.0) -> dict[str, Any]:
    validate_name(name, "workflow")
    if on_error not in wf_m.ON_ERROR:
        raise InvalidRequest(f"on_error must be one of stop, skip, retry; got {on_error!r}")
    delay = seconds(retry_delay, "retry_delay", zero_ok=True)
    wf_m.retries(retries, delay)  # validates
    return {"name": name, "steps": [], "on_error": on_error,
            "retry": {"count": retries, "delay_s": delay},
            "step_timeout_s": seconds(step_timeout, "step_timeout")}


def workflow_add_step(draft: dict[str, Any], step: str, agent: str | None, *,
                      timeout: Any = None, on_error: Any = None, retries: Any = None,
                      retry_delay: Any = None, approval: bool = False, on_timeout: Any = None
                      ) -> dict[str, Any]:
    """``draft`` with one more step (a new dict); raises InvalidRequest or Conflict.
    An ``approval`` step names no agent; a rejection stops the run whatever
    ``on_error`` says, so it takes no ``on_error`` and no retries."""
    if approval:
        given = [k for k, v in (("agent", agent), ("on_error", on_error), ("retries", retries),
                                ("retry_delay", retry_delay)) if v is not None]
        if given:
            raise InvalidRequest(f"approval step {step!r}: a person decides it, "
                                 f"{given[0]} does not apply")
        spec_fields = _approval_step(draft, step, "workflow", timeout, on_timeout)
        new = {**draft, "steps": [*draft["steps"], {
            **spec_fields, "on_error": None, "retry": None}]}
        workflow_spec(new)
        return new
    agent = _agent_step(step, agent, on_timeout)
    if any(s["name"] == step for s in draft["steps"]):
        raise Conflict(f"workflow {draft['name']!r} already has a step {step!r}")
    limit = draft["step_timeout_s"] if timeout is None else timeout
    retry = None
    if retries is not None or retry_delay is not None:
        delay = draft["retry"]["delay_s"] if retry_delay is None else retry_delay
        count = draft["retry"]["count"] if retries is None else retries
        retry = {"count": count, "delay_s": seconds(delay, "retry_delay", zero_ok=True)}
    new = {**draft, "steps": [*draft["steps"], {
        "name": step, "agent": agent, "timeout_s": seconds(limit, "timeout"),
        "on_error": on_error, "retry": retry}]}
    workflow_spec(new)
    return new


def workflow_spec(draft: dict[str, Any]) -> wf_m.WorkflowSpec:
    """The runnable spec of a workflow draft (raises InvalidRequest)."""
    try:
        return wf_m.WorkflowSpec.from_dict(
            {k: draft[k] for k in ("name", "steps", "on_error", "retry")})
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(f"workflow {draft.get('name')!r}: bad definition: {exc}") from None


# -- pools ------------------------------------------------------------------------------


def pool_def(name: str, *, agents: Any = None, agent: Any = None, size: Any = None,
             merge: Any = "all", reducer: Any = None, pick: Any = "round-robin",
             concurrency: Any = 0, timeout: Any = 30.0) -> dict[str, Any]:
    """A pool: a list of member agents, or ``size`` clones of ``agent``."""
    validate_name(name, "pool")
    if (agents is None) == (agent is None):
        raise InvalidRequest("give either agents (a list) or agent with size")
    if agents is not None:
        if not isinstance(agents, list) or not agents:
            raise InvalidRequest("agents must be a non-empty list of agent names")
        for a in agents:
            validate_name(a)
        if len(set(agents)) != len(agents):
            raise InvalidRequest("agents lists a member twice")
        size = len(agents)
    else:
        validate_name(agent)
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 256:
            raise InvalidRequest(f"a pool of clones needs a size from 1 to 256, got {size!r}")
    if merge == "reducer":
        if not reducer:
            raise InvalidRequest("merge reducer needs a reducer agent")
        validate_name(reducer)
    else:
        pool_m.parse_strategy(merge)
    if pick not in pool_m.PICK_STRATEGIES:
        raise InvalidRequest(f"unknown pick strategy {pick!r}: use round-robin or least-busy")
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 0:
        raise InvalidRequest(f"concurrency must be an integer >= 0, got {concurrency!r}")
    return {"name": name, "agents": agents, "agent": agent, "size": size, "merge": merge,
            "reducer": reducer, "pick": pick, "concurrency": concurrency,
            "timeout_s": seconds(timeout, "timeout")}


def pool_agents(spec: dict[str, Any]) -> list[str]:
    """The agents a pool definition names (members or cloned agent, reducer)."""
    named = list(spec["agents"] or [spec["agent"]])
    return [*named, spec["reducer"]] if spec.get("reducer") else named


# -- naos.toml --------------------------------------------------------------------------


def parse_sections(doc: dict[str, Any], agents: set[str], origin: str
                   ) -> dict[str, list[dict[str, Any]]]:
    """The ``sagas``, ``workflows`` and ``pools`` tables of a project file as
    drafts; every agent they name must be one of ``agents``.  Raises
    ConfigError naming the key."""
    out: dict[str, list[dict[str, Any]]] = {"sagas": [], "workflows": [], "pools": []}
    for section, build in (("sagas", _saga), ("workflows", _workflow), ("pools", _pool)):
        tables = doc.get(section, {})
        if not isinstance(tables, dict):
            raise ConfigError(f"{origin}: {section}: expected tables like [{section}.NAME]")
        for name, table in tables.items():
            key = f"{section}.{name}"
            if not isinstance(table, dict):
                raise ConfigError(f"{origin}: {key}: expected a table")
            try:
                spec = build(name, table)
            except (InvalidRequest, Conflict) as exc:
                raise ConfigError(f"{origin}: {key}: {exc}") from None
            for agent in named_agents(section, spec, clones=False):
                if agent not in agents:
                    raise ConfigError(f"{origin}: {key}: no agent named {agent!r} in this file")
            out[section].append(spec)
    return out


def named_agents(kind: str, spec: dict[str, Any], *, clones: bool = True) -> list[str]:
    """Every agent a saga, workflow or pool definition (``kind``, or its
    section name) names: steps, compensations, members, reducer and (with
    ``clones``) the clones a pool made of its agent."""
    if kind in ("pool", "pools"):
        made = pool_m.members_of(spec) if clones and spec.get("agent") else []
        return [*pool_agents(spec), *made]
    names = [s["agent"] for s in spec["steps"] if s["agent"]]  # approvals name none
    return names + [s["compensate_agent"] for s in spec["steps"] if s.get("compensate_agent")]


def _keys(t: dict[str, Any], allowed: frozenset[str]) -> None:
    extra = sorted(set(t) - allowed)
    if extra:
        raise InvalidRequest(f"{extra[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _steps(t: dict[str, Any]) -> list[dict[str, Any]]:
    steps = t.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise InvalidRequest("steps: expected a non-empty list of { name = ..., agent = ... }")
    return steps


def _step_args(i: int, step: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    approval = step.get("approval", False)
    if not isinstance(approval, bool):
        raise InvalidRequest(f"steps[{i}].approval: expected true or false")
    try:
        _keys(step, APPROVAL_KEYS if approval else allowed)
    except InvalidRequest as exc:
        raise InvalidRequest(f"steps[{i}].{exc}") from None
    if not isinstance(step.get("name"), str) or not (
            approval or isinstance(step.get("agent"), str)):
        raise InvalidRequest(f"steps[{i}]: needs a name and an agent (or approval = true)")
    return {k: v for k, v in step.items() if k not in ("name", "agent")}


def _stepped(draft_fn: Any, add_fn: Any, keys: frozenset[str], step_keys: frozenset[str]
             ) -> Any:
    """A section builder for sagas or workflows: the draft, then each step."""

    def build(name: str, t: dict[str, Any]) -> dict[str, Any]:
        _keys(t, keys)
        draft = draft_fn(name, **{k: v for k, v in t.items() if k != "steps"})
        for i, step in enumerate(_steps(t)):
            args = _step_args(i, step, step_keys)
            draft = add_fn(draft, step["name"], step.get("agent"), **args)
        return dict(draft)

    return build


_saga = _stepped(saga_draft, saga_add_step, SAGA_KEYS, SAGA_STEP_KEYS)
_workflow = _stepped(workflow_draft, workflow_add_step, WF_KEYS, WF_STEP_KEYS)


def _pool(name: str, t: dict[str, Any]) -> dict[str, Any]:
    _keys(t, POOL_KEYS)
    return pool_def(name, **t)
