"""Methods for agents and supervisors (see docs/protocol.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from actors.domain.definitions import (
    RESTART_TYPES,
    STRATEGIES,
    AgentDef,
    SupervisorDef,
    normalise_choice,
    validate_name,
)
from actors.domain.wasm_abi import CHANNEL_FUNCTIONS
from naosd.control.params import Bool, Int, Spec, Str
from naosd.control.roles import READ
from naosd.control.table import MethodTable
from naosd.errors import ConfinementUnavailable, InvalidRequest, NaosError
from naosd.storage import definitions as defs_store

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("agents")
method = METHODS.method

NAME = Str(max_len=64)
TIMEOUT = Spec((int, float), 30.0)


def _timeout(p: dict[str, Any]) -> float:
    value = float(p["timeout"])
    if not 0 < value <= 3600:
        raise InvalidRequest("timeout must be between 0 and 3600 seconds")
    return value


class _Execution(TypedDict):  # typed keys: a ** of it cannot pass for stream, role, deadline
    max_concurrency: Spec
    confinement: Spec
    env: Spec
    cwd: Spec
    grants: Spec
    limits: Spec
    entry: Spec


EXECUTION = _Execution(max_concurrency=Int(None, lo=1, hi=256),
                       confinement=Str(None, max_len=8), env=Spec(dict, None),
                       cwd=Str(None, max_len=4096), grants=Spec(list, None),
                       limits=Spec(dict, None), entry=Str(None, max_len=255))


def execution_of(p: dict[str, Any]) -> dict[str, Any]:
    """The execution settings given to create (checked with the definition)."""
    return {k: p[k] for k in ("max_concurrency", "confinement", "env", "cwd", "grants",
                              "limits") if p.get(k) is not None}


async def build_definition(d: Services, p: dict[str, Any]) -> AgentDef:
    """An AgentDef from create parameters, its code copied into a snapshot
    (a directory or file source) and checked against what this kernel can
    confine; raises InvalidRequest, ConfinementUnavailable."""
    from naosd.agents.snapshots import snapshot_definition

    definition = replace(agent_def(p), execution=execution_of(p)).validated()
    check_confinement(definition)
    return await asyncio.to_thread(snapshot_definition, definition,
                                   d.config.state_dir / "code", entry=p.get("entry"))


def check_confinement(definition: AgentDef) -> None:
    """Refuse a confined agent this kernel cannot confine (an explicit
    ``confinement = "none"`` is allowed, and audited with the definition)."""
    if definition.confinement == "none":
        return
    from naosd.runtime.confine.support import probe

    missing = probe().missing()
    if missing:
        raise ConfinementUnavailable(
            f"agent {definition.name!r}: this kernel cannot confine agent code (missing: "
            f"{', '.join(missing)}); define it with confinement = \"none\" to run it "
            "unconfined (audited)")


def agent_def(p: dict[str, Any]) -> AgentDef:
    """An AgentDef from create parameters; raises InvalidRequest."""
    validate_name(p["name"])
    template, source = p["template"], p["source"]
    if bool(template) == bool(source):
        raise InvalidRequest("give exactly one of template or source")
    if template:
        from actors.templates import TEMPLATES

        if template not in TEMPLATES:
            raise InvalidRequest(
                f"unknown template {template!r}; templates: {', '.join(sorted(TEMPLATES))}")
        kind, where = "template", template
    else:
        kind, where = _source_kind(source)
    requires = p["requires"] or []
    if not isinstance(requires, list):
        raise InvalidRequest("requires must be a list of strings")
    return AgentDef(p["name"], kind, where, p["config"] or {}, p["supervisor"],
                    normalise_choice(p["restart"], RESTART_TYPES, "restart type"),
                    requires=tuple(requires))


def _source_kind(source: str) -> tuple[str, str]:
    path = Path(source)
    if not path.is_absolute():
        raise InvalidRequest(f"source must be an absolute path, got {source!r}")
    if path.is_dir():
        return "python", str(path)  # the snapshot finds its entry and its kind
    if not path.is_file():
        raise InvalidRequest(f"source {source} does not exist or is not a file")
    if path.suffix == ".py":
        return "python", str(path)
    if path.suffix == ".wasm":
        return "wasm", str(path)
    raise InvalidRequest(f"source {source}: expected a .py handler or a .wasm module")


@method("agent.create", name=NAME, template=Str(None), source=Str(None),
        config=Spec(dict, None), supervisor=Str(None, max_len=64),
        restart=Str("permanent"), start=Bool(False), timeout=TIMEOUT,
        requires=Spec(list, None), **EXECUTION)
async def agent_create(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Register an agent from a template or a handler file or directory (its code is
    copied into a snapshot; optionally start it)."""
    definition = await build_definition(d, p)
    try:
        if definition.source_kind == "wasm":
            await _check_wasm_agent(d, definition)
        return await d.agents.create(definition, start=p["start"], wait_s=_timeout(p))
    except NaosError as exc:
        raise _as_given(exc, d, definition, p["source"]) from None


def _as_given(exc: NaosError, d: Services, definition: AgentDef, source: str | None
              ) -> NaosError:
    """A refusal names the files the user gave, not naos's snapshot of them
    (``<state>/code/<digest>/handler.py`` -> ``/their/dir/handler.py``)."""
    digest = definition.execution.get("digest")
    if not source or not digest or not exc.args:
        return exc
    given = Path(source)
    snap_root = str(d.config.state_dir / "code" / digest)
    text = str(exc.args[0]).replace(snap_root, str(given if given.is_dir() else given.parent))
    return type(exc)(text, *exc.args[1:])


async def _check_wasm_agent(d: Services, definition: AgentDef) -> None:
    """Refuse a WASM agent whose module cannot run with its grants (its
    execution grants, and the older ``config.grants`` for log and KV): the
    error names each import refused."""
    legacy = definition.config.get("grants", [])
    if not isinstance(legacy, list) or not all(isinstance(g, str) for g in legacy):
        raise InvalidRequest("config.grants must be a list of host function names")
    channel = sorted(set(legacy) & set(CHANNEL_FUNCTIONS))
    if channel:
        raise InvalidRequest(f"config.grants: {', '.join(channel)} act as the agent over its "
                             "channel: grant them in the agent's execution grants")
    grants = sorted({*legacy, *definition.wasm_grants})
    from actors.wasm.files import read_module
    from actors.wasm.limits import wasm_limits

    module = await asyncio.to_thread(read_module, Path(definition.source))

    try:
        limits = wasm_limits(definition.config)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"config: bad WASM limits: {exc}") from None
    report = await d.sandbox.validate(module, tuple(grants), limits)
    if not report["ok"]:
        problems = "; ".join(report["problems"]) or report["verdict"]
        raise InvalidRequest(f"{definition.source} cannot run as an agent: {problems}")



@method("agent.update", name=NAME, source=Str(None), config=Spec(dict, None),
        entry=Str(None, max_len=255), timeout=TIMEOUT)
async def agent_update(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Replace an agent's code (a new snapshot) and/or config, checked like
    create; the agent restarts on it if it was running (both digests audited)."""
    from naosd.agents.snapshots import snapshot_definition

    if p["source"] is None and p["config"] is None:
        raise InvalidRequest("nothing to update: give source, config or both")
    new = await d.db.call(lambda s: defs_store.get_agent(s, p["name"]))
    if p["config"] is not None:
        new = replace(new, config=p["config"])
    if p["source"] is not None:
        kind, where = _source_kind(p["source"])
        new = await asyncio.to_thread(snapshot_definition,
                                      replace(new, source_kind=kind, source=where),
                                      d.config.state_dir / "code", entry=p["entry"])
    new = new.validated()
    await check_new_code(d, new)
    return await d.agents.update(new, wait_s=_timeout(p))


async def check_new_code(d: Services, definition: AgentDef) -> None:
    """What create checks of an agent's code before the actors see it."""
    check_confinement(definition)
    if definition.source_kind == "wasm":
        await _check_wasm_agent(d, definition)


@method("agent.list")
async def agent_list(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every registered agent with its runtime state."""
    return await d.agents.list()


@method("agent.inspect", name=NAME, logs=Int(20, lo=0, hi=1000))
async def agent_inspect(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Definition, runtime state and the last log lines of one agent."""
    view = await d.agents.describe(p["name"])
    view.update(await _confinement_of(d, view))
    view["logs"] = await d.db.call(
        lambda s: defs_store.read_logs(s, p["name"], n=p["logs"]))
    return view


async def _confinement_of(d: Services, view: dict[str, Any]) -> dict[str, Any]:
    """The agent's code digest, its handler's pid (from naosd's channel, never
    the handler's word) and its confinement (docs/security.md)."""
    from naosd.control.confinement_view import agent_confinement

    channels = d.agents.channels
    channel = channels.get(view["name"]) if channels is not None else None
    handler_pid = channel.pid if channel is not None and channel.pid else None
    execution = view.get("execution") or {}
    local = d.config.cluster_node if d.config.cluster_enabled else None
    remote = bool(view.get("node")) and view.get("node") != local
    if d.config.cluster_enabled and view.get("requires") and not view.get("node"):
        remote = handler_pid is None  # placed by requirements: on whichever node has them
    confinement = await asyncio.to_thread(agent_confinement, execution, remote=remote,
                                          handler_pid=handler_pid)
    return {"digest": execution.get("digest"), "handler_pid": handler_pid,
            "confinement": confinement}


@method("agent.start", name=NAME, timeout=TIMEOUT)
async def agent_start(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Start an agent (and keep it running: its desired state becomes running)."""
    return await d.agents.start(p["name"], wait_s=_timeout(p))


@method("agent.stop", name=NAME, timeout=TIMEOUT)
async def agent_stop(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop an agent gracefully (killed after its shutdown timeout)."""
    return await d.agents.stop(p["name"], wait_s=_timeout(p))


@method("agent.restart", name=NAME, timeout=TIMEOUT)
async def agent_restart(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop an agent in whatever state it is, then start it for good (a failed
    agent gets a fresh start)."""
    await d.agents.stop(p["name"], wait_s=_timeout(p))
    return await d.agents.start(p["name"], wait_s=_timeout(p))


@method("agent.delete", name=NAME, timeout=TIMEOUT, force=Bool(False))
async def agent_delete(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop and forget an agent (its logs and audit rows stay); refused while a
    saga, workflow or pool names it, or (without force) while it runs under a
    supervisor."""
    return await delete_agent(d, p["name"], wait_s=_timeout(p), force=p["force"])


async def delete_agent(d: Services, name: str, *, wait_s: float, force: bool
                       ) -> dict[str, Any]:
    """Delete an agent, and its budget with it (a new agent of the same name
    must not inherit it)."""
    result = await d.agents.delete(name, wait_s=wait_s, force=force)
    return {**result, "budget_removed": await d.broker.drop_budget(name)}


@method("agent.run", name=NAME, input=Spec(object, None), timeout=TIMEOUT,
        idempotency_key=Str(""))
async def agent_run(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Send one message to an agent and return its reply."""
    return await d.agents.run(p["name"], p["input"], wait_s=_timeout(p),
                              key=p["idempotency_key"])


@method("agent.kill", name=NAME)
async def agent_kill(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL the agent's process (to test crash recovery)."""
    return await d.agents.kill(p["name"])


@method("agent.logs", stream=True, role=READ, name=Str(None, max_len=64),
        n=Int(50, lo=0, hi=100_000), follow=Bool(False))
async def agent_logs(d: Services, p: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """An agent's log lines (all agents when name is omitted); follow streams."""
    name = p["name"]
    if name:
        await d.db.call(lambda s: defs_store.get_agent(s, name))
    lines = await d.db.call(lambda s: defs_store.read_logs(s, name, n=p["n"]))
    last = lines[-1]["id"] if lines else await d.db.call(defs_store.log_head)
    for line in lines:
        yield line
    if not p["follow"]:
        return

    def fetch(store: Any, after: int) -> tuple[list[dict[str, Any]], int]:
        fresh = defs_store.logs_after(store, after, agent=name)
        return fresh, (fresh[-1]["id"] if fresh else after)

    async for batch in d.db.follow(fetch, last):
        for line in batch:
            yield line


@method("supervisor.create", name=NAME, strategy=Str("one_for_one"),
        max_restarts=Int(3, lo=0, hi=1_000_000), window=Spec((int, float), 5.0),
        backoff_initial=Spec((int, float), 0.0), backoff_max=Spec((int, float), 0.0),
        parent=Str(None, max_len=64))
async def supervisor_create(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Define a supervisor (OTP strategy, restart intensity, optional backoff)."""
    sup = SupervisorDef(p["name"], normalise_choice(p["strategy"], STRATEGIES, "strategy"),
                        p["max_restarts"], float(p["window"]), float(p["backoff_initial"]),
                        float(p["backoff_max"]), p["parent"])
    return await d.agents.create_supervisor(sup)


@method("supervisor.add", supervisor=NAME, child=NAME, restart=Str("permanent"))
async def supervisor_add(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Put an agent or supervisor under a supervisor."""
    restart = normalise_choice(p["restart"], RESTART_TYPES, "restart type")
    return await d.agents.add_child(p["supervisor"], p["child"], restart)


@method("supervisor.start", name=NAME, timeout=TIMEOUT)
async def supervisor_start(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Start a supervisor and its whole subtree."""
    return await d.agents.start_supervisor(p["name"], wait_s=_timeout(p))


@method("supervisor.stop", name=NAME, timeout=TIMEOUT)
async def supervisor_stop(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop a supervisor and everything under it."""
    return await d.agents.stop_supervisor(p["name"], wait_s=_timeout(p))


@method("supervisor.restart", name=NAME, timeout=TIMEOUT)
async def supervisor_restart(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop a supervisor and its subtree gracefully, then start them all again
    (a supervisor that gave up, failed, gets a fresh start)."""
    await d.agents.stop_supervisor(p["name"], wait_s=_timeout(p))
    return await d.agents.start_supervisor(p["name"], wait_s=_timeout(p))


@method("supervisor.delete", name=NAME, timeout=TIMEOUT)
async def supervisor_delete(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Stop and forget a supervisor that has no children."""
    return await d.agents.delete_supervisor(p["name"], wait_s=_timeout(p))


@method("supervisor.status", role=READ, name=Str(None, max_len=64))
async def supervisor_status(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """The supervision tree (of one supervisor when a name is given)."""
    return await d.agents.supervisor_tree(p["name"])


@method("supervisor.list", role=READ)
async def supervisor_list(d: Services, p: dict[str, Any]) -> list[dict[str, Any]]:
    """Every defined supervisor."""
    sups = await d.db.call(lambda s: defs_store.list_supervisors(s))
    return [s.to_dict() for s in sups]
