"""What ``naosctl apply`` must do to make naosd match a project file (pure).

:func:`plan` compares what the file defines with what naosd holds and says,
per resource, ``create``, ``update`` (with the fields that differ),
``unchanged`` or, with ``prune``, ``delete``: a resource this same file
named at its last apply (``applied``, recorded by naosd at each apply) and
no longer names.  Resources the file never named are never touched, so two
project files can share one naosd.

Agents are compared with their code digest resolved (the caller snapshots a
source's files to know it), so editing a handler is an update; an agent's
desired state (an operator's stop) and its place in the start order are not
part of its definition and never make a change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from actors.domain.definitions import AgentDef, SupervisorDef, changed_fields
from naosd.errors import Conflict

KINDS = ("supervisor", "agent", "saga", "workflow", "pool")
ORCH = ("saga", "workflow", "pool")


@dataclass(frozen=True, slots=True)
class State:
    """Definitions by kind and name: what a file wants, or what naosd holds."""

    agents: dict[str, AgentDef] = field(default_factory=dict)
    supervisors: dict[str, SupervisorDef] = field(default_factory=dict)
    orch: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # kind -> name ->

    def names(self) -> dict[str, list[str]]:
        return {"supervisor": sorted(self.supervisors), "agent": sorted(self.agents),
                **{k: sorted(self.orch.get(k, {})) for k in ORCH}}


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # supervisor | agent | saga | workflow | pool
    name: str
    action: str  # create | update | delete | unchanged
    fields: tuple[str, ...] = ()  # for an update: what differs

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action,
                "fields": list(self.fields)}


def plan(want: State, have: State, *, applied: dict[str, list[str]], prune: bool
         ) -> list[Change]:
    """The changes, supervisors first, then agents, sagas, workflows, pools;
    deletions last.  Raises Conflict when the file names as an agent what
    naosd holds as a supervisor (or the other way round)."""
    _no_kind_clash(want, have)
    out = [_agent_or_sup("supervisor", n, d, have.supervisors.get(n))
           for n, d in want.supervisors.items()]
    out += [_agent_or_sup("agent", n, d, have.agents.get(n)) for n, d in want.agents.items()]
    for kind in ORCH:
        held = have.orch.get(kind, {})
        out += [_spec(kind, n, spec, held.get(n)) for n, spec in want.orch.get(kind, {}).items()]
    if prune:
        out += _deletions(want, have, applied)
    return out


def applied_after(want: State, have: State, applied: dict[str, list[str]], *, prune: bool
                  ) -> dict[str, list[str]]:
    """What to record as this file's after an apply: what it names now and,
    without ``prune``, what it named before and naosd still holds (a later
    ``--prune`` deletes those)."""
    now, held = want.names(), have.names()
    return {k: sorted(set(now[k]) | (set() if prune else
                                     {n for n in applied.get(k, []) if n in held[k]}))
            for k in KINDS}


def _no_kind_clash(want: State, have: State) -> None:
    for name in set(want.agents) & set(have.supervisors):
        raise Conflict(f"{name!r} is an agent in the file but a supervisor in naosd")
    for name in set(want.supervisors) & set(have.agents):
        raise Conflict(f"{name!r} is a supervisor in the file but an agent in naosd")


def _agent_or_sup(kind: str, name: str, wanted: AgentDef | SupervisorDef,
                  held: AgentDef | SupervisorDef | None) -> Change:
    if held is None:
        return Change(kind, name, "create")
    fields = changed_fields(held, comparable(wanted, held))
    return Change(kind, name, "update", tuple(fields)) if fields else Change(kind, name,
                                                                             "unchanged")


def comparable(wanted: Any, held: Any) -> Any:
    """``wanted`` with what a file does not define taken from ``held``."""
    return replace(wanted, position=held.position, desired=held.desired,
                   created_at=held.created_at)


def _spec(kind: str, name: str, wanted: dict[str, Any], held: dict[str, Any] | None) -> Change:
    if held is None:
        return Change(kind, name, "create")
    fields = sorted(k for k in set(wanted) | set(held) if _canon(wanted.get(k)) !=
                    _canon(held.get(k)))
    return Change(kind, name, "update", tuple(fields)) if fields else Change(kind, name,
                                                                             "unchanged")


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _deletions(want: State, have: State, applied: dict[str, list[str]]) -> list[Change]:
    """What this file applied before, no longer names and naosd still holds:
    sagas, workflows and pools first (they name agents), then agents, then
    supervisors (children before parents)."""
    wanted, held = want.names(), have.names()
    gone = {k: [n for n in applied.get(k, []) if n not in wanted[k] and n in held[k]]
            for k in KINDS}
    out = [Change(k, n, "delete") for k in ORCH for n in gone[k]]
    out += [Change("agent", n, "delete") for n in gone["agent"]]

    def depth(name: str) -> int:
        parent = have.supervisors[name].parent
        return 0 if parent is None or parent not in have.supervisors else 1 + depth(parent)

    sups = sorted(gone["supervisor"], key=lambda n: (-depth(n), n))
    return out + [Change("supervisor", n, "delete") for n in sups]
