"""``project.apply``: make naosd match a project file (see docs/naos-toml.md).

The plan is pure (:mod:`actors.domain.reconcile`); this module reads what
naosd holds, resolves each agent's code digest (without copying anything on
a dry run), and carries the plan out in its order: supervisors, agents,
sagas, workflows, pools, then what ``prune`` deletes.  Only what changed
restarts: an updated agent (see ``Agents.update``) or an updated supervisor
with its subtree.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.domain.definitions import IMPLICIT_SUPERVISOR, AgentDef
from actors.domain.project import Project, parse
from actors.domain.reconcile import ORCH, Change, State, applied_after, comparable, plan
from naosd.agents.snapshots import snapshot_definition
from naosd.control.agents import delete_agent
from naosd.control.orchestration import delete_pool
from naosd.control.params import Bool, Spec, Str
from naosd.control.table import MethodTable
from naosd.errors import ConfigError, InvalidRequest
from naosd.orchestration.coordinators import MACHINES
from naosd.storage import definitions as defs_store
from naosd.storage import runs as orch_store

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("project")
method = METHODS.method


@method("project.apply", text=Str(max_len=1 << 20), base=Str(max_len=4096),
        origin=Str("naos.toml", max_len=4096), timeout=Spec((int, float), 30.0),
        dry_run=Bool(False), prune=Bool(False))
async def project_apply(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Reconcile naosd with a naos.toml: create what is new, update what
    differs (definition, config, limits, code digest; only those restart),
    with prune delete what this file applied before and no longer names;
    dry_run only returns the plan."""
    wait_s = float(p["timeout"])
    if not 0 < wait_s <= 3600:
        raise InvalidRequest("timeout must be between 0 and 3600 seconds")
    project = _parse(p)
    key = str(Path(p["base"]) / Path(p["origin"]).name)
    code_dir = d.config.state_dir / "code"
    want = await asyncio.to_thread(_wanted, project, code_dir)
    have, applied = await d.db.call(lambda s: (_held(s), defs_store.applied_names(s, key)))
    changes = plan(want, have, applied=applied, prune=p["prune"])
    if not p["dry_run"]:
        await _carry_out(d, project, want, have, changes, wait_s)
        names = applied_after(want, have, applied, prune=p["prune"])
        await d.db.call(lambda s: defs_store.record_applied(s, key, names))
        await d.db.notify()
    return summary(changes, dry_run=p["dry_run"])


def _parse(p: dict[str, Any]) -> Project:
    try:
        doc = tomllib.loads(p["text"])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p['origin']}: not valid TOML: {exc}") from None
    return parse(doc, Path(p["base"]), origin=p["origin"])


def _wanted(project: Project, code_dir: Path) -> State:
    """What the file defines, each agent's source resolved to the snapshot
    it would run (nothing is written)."""
    agents = {a.name: snapshot_definition(a, code_dir, write=False) for a in project.agents}
    orch = {kind: {s["name"]: s for s in project.orchestration.get(kind + "s", [])}
            for kind in ORCH}
    return State(agents, {s.name: s for s in project.supervisors}, orch)


def _held(store: Any) -> State:
    return State({a.name: a for a in defs_store.list_agents(store)},
                 {s.name: s for s in defs_store.list_supervisors(store)},
                 {k: {s["name"]: s for s in orch_store.list_defs(store, k)} for k in ORCH})


async def _carry_out(d: Services, project: Project, want: State, have: State,
                     changes: list[Change], wait_s: float) -> None:
    written = {a.name: a for a in project.agents}  # the file's sources, to copy now
    restart: list[str] = []  # updated supervisors that run: restarted with their subtree
    for c in changes:
        if c.kind == "supervisor":
            await _supervisor(d, want, c, restart, wait_s)
        elif c.kind == "agent":
            await _agent(d, written.get(c.name), c, wait_s)
        elif c.action != "unchanged":
            await _orch(d, want, c, wait_s)
    await d.agents.sync(None)
    await d.agents.sync(IMPLICIT_SUPERVISOR)
    for name in restart:
        await d.agents.stop_supervisor(name, wait_s=wait_s)
        await d.agents.start_supervisor(name, wait_s=wait_s)
    for sup in want.supervisors.values():
        if sup.parent is None and (sup.name not in have.supervisors
                                   or have.supervisors[sup.name].desired == "running"):
            await d.agents.wait_for(sup.name, running=True, wait_s=wait_s)


async def _supervisor(d: Services, want: State, c: Change, restart: list[str],
                      wait_s: float) -> None:
    if c.action == "create":
        await d.db.call(lambda s: defs_store.create_supervisor(s, want.supervisors[c.name]))
    elif c.action == "update":
        held = await d.db.call(lambda s: defs_store.get_supervisor(s, c.name))
        await d.db.call(lambda s: defs_store.update_supervisor(
            s, comparable(want.supervisors[c.name], held)))
        if held.desired == "running":
            restart.append(c.name)
    elif c.action == "delete":
        await d.agents.delete_supervisor(c.name, wait_s=wait_s)


async def _agent(d: Services, written: AgentDef | None, c: Change, wait_s: float) -> None:
    if written is not None and c.action in ("create", "update"):
        definition = await asyncio.to_thread(snapshot_definition, written,
                                             d.config.state_dir / "code")
        if c.action == "create":
            await d.db.call(lambda s: defs_store.create_agent(s, definition))
        else:
            await d.agents.update(definition, wait_s=wait_s)
    elif c.action == "delete":
        await delete_agent(d, c.name, wait_s=wait_s, force=True)


async def _orch(d: Services, want: State, c: Change, wait_s: float) -> None:
    spec = want.orch.get(c.kind, {}).get(c.name)
    if c.kind == "pool":
        if c.action == "create":
            await d.pools.create(spec or {})
        elif c.action == "update":
            await d.pools.redefine(spec or {})
        elif c.action == "delete":
            await delete_pool(d, c.name, wait_s=wait_s)
        return
    if c.action == "create":
        await d.db.call(lambda s: orch_store.create_def(s, c.kind, c.name, spec or {}))
    elif c.action == "update":
        await d.db.call(lambda s: orch_store.update_def(s, c.kind, c.name, spec or {},
                                                        "applied"))
    elif c.action == "delete":
        final = tuple(sorted(MACHINES[c.kind].final))
        await d.db.call(lambda s: orch_store.delete_def(s, c.kind, c.name, final))
    await d.db.notify()


def summary(changes: list[Change], *, dry_run: bool) -> dict[str, Any]:
    """The plan, and the names by action (agents and supervisors by name,
    the others as "saga NAME")."""
    def label(c: Change) -> str:
        return c.name if c.kind in ("agent", "supervisor") else f"{c.kind} {c.name}"

    by = {a: [label(c) for c in changes if c.action == a]
          for a in ("create", "update", "delete", "unchanged")}
    return {"dry_run": dry_run, "plan": [c.to_dict() for c in changes],
            "created": by["create"], "updated": by["update"], "deleted": by["delete"],
            "existing": by["unchanged"]}
