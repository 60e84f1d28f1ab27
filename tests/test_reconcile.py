"""The apply plan (actors/domain/reconcile.py): pure, no daemon."""

from __future__ import annotations

from dataclasses import replace

import pytest

from actors.domain.definitions import AgentDef, SupervisorDef
from actors.domain.reconcile import State, applied_after, plan
from naosd.errors import Conflict

A = AgentDef("a", "python", "/code/d1/a.py", {"x": 1}, execution={"digest": "d1"})
B = AgentDef("b", "template", "echo")
S = SupervisorDef("s")
SAGA = {"name": "trip", "steps": [{"name": "one", "agent": "a"}]}


def actions(changes) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {f"{c.kind} {c.name}": (c.action, c.fields) for c in changes}


def test_new_things_are_created_in_order() -> None:
    want = State({"a": A, "b": B}, {"s": S}, {"saga": {"trip": SAGA}})
    changes = plan(want, State(), applied={}, prune=True)
    assert [(c.kind, c.name, c.action) for c in changes] == [
        ("supervisor", "s", "create"), ("agent", "a", "create"), ("agent", "b", "create"),
        ("saga", "trip", "create")]


def test_desired_state_position_and_creation_time_are_not_changes() -> None:
    held = replace(A, desired="stopped", position=7, created_at="2026-01-01")
    changes = plan(State({"a": A}), State({"a": held}), applied={}, prune=False)
    assert actions(changes) == {"agent a": ("unchanged", ())}


def test_code_config_and_specs_that_differ_are_updates() -> None:
    new = replace(A, source="/code/d2/a.py", config={"x": 2}, execution={"digest": "d2"})
    saga = {**SAGA, "steps": [{"name": "two", "agent": "a"}]}
    changes = plan(State({"a": new}, {"s": replace(S, strategy="one_for_all")},
                         {"saga": {"trip": saga}}),
                   State({"a": A}, {"s": S}, {"saga": {"trip": SAGA}}), applied={}, prune=False)
    assert actions(changes) == {"agent a": ("update", ("source", "config", "execution")),
                                "supervisor s": ("update", ("strategy",)),
                                "saga trip": ("update", ("steps",))}


def test_prune_deletes_only_what_this_file_applied_dependents_first() -> None:
    inner = SupervisorDef("inner", parent="s")
    have = State({"a": A, "b": B, "other": B}, {"s": S, "inner": inner},
                 {"saga": {"trip": SAGA}})
    applied = {"agent": ["a", "b"], "supervisor": ["s", "inner"], "saga": ["trip"]}
    want = State({"b": B})
    assert [c.action for c in plan(want, have, applied=applied, prune=False)] == ["unchanged"]
    deletes = [(c.kind, c.name) for c in plan(want, have, applied=applied, prune=True)
               if c.action == "delete"]
    assert deletes == [("saga", "trip"), ("agent", "a"), ("supervisor", "inner"),
                       ("supervisor", "s")]  # never "other": the file never named it


def test_what_is_recorded_keeps_dropped_names_until_pruned() -> None:
    have = State({"a": A, "b": B})
    applied = {"agent": ["a", "b", "gone-by-hand"]}
    kept = applied_after(State({"b": B}), have, applied, prune=False)
    assert kept["agent"] == ["a", "b"]
    assert applied_after(State({"b": B}), have, applied, prune=True)["agent"] == ["b"]


def test_an_agent_in_the_file_that_naosd_holds_as_a_supervisor_is_refused() -> None:
    with pytest.raises(Conflict, match="supervisor in naosd"):
        plan(State({"s": B}), State(supervisors={"s": S}), applied={}, prune=False)
