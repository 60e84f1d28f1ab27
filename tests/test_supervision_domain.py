"""The pure OTP supervision state machine (actors/domain/supervision.py).

Most tests drive ``handle`` through a tiny well-behaved shell (``drive``): it
answers Start with ChildStarted, Stop/Kill with ChildExited and Schedule with
BackoffElapsed, so a table row can state the whole effect sequence of a
restart. The hypothesis test at the end drives a shell that also injects
crashes and operator commands at random moments.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.domain import supervision as sv
from actors.domain.supervision import (
    PROCESS_DIED,
    UP,
    Activate,
    AddChild,
    Alert,
    Audit,
    BackoffElapsed,
    Boot,
    ChildExited,
    ChildLost,
    ChildRun,
    ChildSpawned,
    ChildSpec,
    ChildStarted,
    Deactivate,
    Effect,
    Event,
    ExitNotice,
    Forget,
    GiveUp,
    Kill,
    Pause,
    Pending,
    ProcessGone,
    Reconcile,
    RemoveChild,
    RestartType,
    Resume,
    Schedule,
    Shutdown,
    Start,
    StartChild,
    StartTimedOut,
    Stop,
    StopChild,
    StopTimeout,
    Strategy,
    SupervisorSpec,
    SupState,
    SupStatus,
    Unplaceable,
)
from naosd.errors import Conflict, InvalidRequest, NaosError, NotFound

PERM, TRANS, TEMP = RestartType.PERMANENT, RestartType.TRANSIENT, RestartType.TEMPORARY
O41, O4A, R41 = Strategy.ONE_FOR_ONE, Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE


def make_spec(
    strategy: Strategy = O41, restarts: Iterable[RestartType] = (PERM,) * 3, **kw: Any
) -> SupervisorSpec:
    children = tuple(ChildSpec("abcdefgh"[i], "agent", r) for i, r in enumerate(restarts))
    return SupervisorSpec("sup", strategy, children=children, **kw)


def drive(state: SupState, effects: list[Effect], now: float) -> tuple[SupState, list[Effect]]:
    """Answer every effect like an obedient shell; return the non-audit effects seen."""
    queue, trace = deque(effects), list[Effect]()
    while queue:
        effect = queue.popleft()
        if isinstance(effect, Audit):
            continue
        trace.append(effect)
        match effect:
            case Start(name):
                event: Event = ChildStarted(name, 1000 + len(trace), now)
            case Stop(name) | Kill(name):
                event = ChildExited(name, isinstance(effect, Kill), "shutdown", now)
            case Schedule(name, delay):
                now += delay
                event = BackoffElapsed(name, now)
            case _:
                continue
        state, more = sv.handle(state, event)
        queue.extend(more)
    return state, trace


def running(spec: SupervisorSpec | None = None, now: float = 0.0) -> SupState:
    spec = spec or make_spec()
    state, effects = sv.handle(sv.initial(spec), Boot(now))
    return drive(state, effects, now)[0]


def step(state: SupState, event: Event) -> tuple[SupState, list[Effect]]:
    """One event, then the obedient shell: the non-audit effects of the whole episode."""
    state, effects = sv.handle(state, event)
    return drive(state, effects, getattr(event, "now", 0.0))


def crash(name: str, now: float, abnormal: bool = True) -> ChildExited:
    return ChildExited(name, abnormal, "boom" if abnormal else "done", now)


def runs(state: SupState) -> dict[str, str]:
    return {c.name: c.run.value for c in state.children}


def audit_types(effects: list[Effect]) -> list[str]:
    return [e.type for e in effects if isinstance(e, Audit)]


def ops(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, Audit)]


# -- specs and names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("A", id="upper"),
        pytest.param("1a", id="digit-first"),
        pytest.param("-a", id="hyphen-first"),
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="too-long"),
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("a_b", id="underscore"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_validate_name_rejects(name: object) -> None:
    with pytest.raises(InvalidRequest, match="lowercase letters, digits and hyphens"):
        sv.validate_name(name)


@pytest.mark.parametrize("name", ["a", "a-1", "x" * 64])
def test_validate_name_accepts(name: str) -> None:
    assert sv.validate_name(name) == name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"name": "Bad"}, "invalid supervisor name", id="name"),
        pytest.param({"strategy": "round_robin"}, "invalid strategy", id="strategy"),
        pytest.param({"max_restarts": -1}, "max_restarts must be >= 0", id="negative-max"),
        pytest.param({"max_restarts": True}, "must be an integer", id="bool-max"),
        pytest.param({"max_restarts": 1.5}, "must be an integer", id="float-max"),
        pytest.param({"window_s": 0}, "window_s must be", id="zero-window"),
        pytest.param({"window_s": float("nan")}, "window_s must be", id="nan-window"),
        pytest.param({"window_s": "5"}, "window_s must be", id="str-window"),
        pytest.param({"window_s": False}, "window_s must be", id="bool-window"),
        pytest.param({"backoff_initial_s": -1.0}, "backoff_initial_s", id="neg-backoff"),
        pytest.param({"backoff_max_s": float("inf")}, "backoff_max_s", id="inf-backoff"),
        pytest.param(
            {"backoff_initial_s": 2.0, "backoff_max_s": 1.0},
            ">= backoff_initial",
            id="max-below-initial",
        ),
        pytest.param(
            {"children": (ChildSpec("a", "agent"), ChildSpec("a", "agent"))},
            "duplicate child name 'a'",
            id="duplicate",
        ),
        pytest.param({"children": ("a",)}, "must be ChildSpec", id="not-a-spec"),
    ],
)
def test_supervisor_spec_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "sup", "strategy": O41} | kwargs
    with pytest.raises(InvalidRequest, match=message):
        SupervisorSpec(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"name": "9"}, "invalid child name", id="name"),
        pytest.param({"kind": "robot"}, "invalid child kind", id="kind"),
        pytest.param({"restart": "sometimes"}, "invalid restart type", id="restart"),
        pytest.param({"shutdown_timeout_s": -1}, "shutdown_timeout_s", id="timeout"),
    ],
)
def test_child_spec_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        ChildSpec(**({"name": "a", "kind": "agent"} | kwargs))


def test_specs_coerce_strings_and_lists() -> None:
    child = ChildSpec("a", "supervisor", "transient", 0)  # type: ignore[arg-type]
    spec = SupervisorSpec("s", "one-for-all", children=[child])  # type: ignore[arg-type]
    assert child.restart is TRANS and spec.strategy is O4A and spec.children == (child,)
    assert spec.child("a") is child
    with pytest.raises(NotFound, match="no child 'zz'"):
        spec.child("zz")


@pytest.mark.parametrize(
    ("initial", "cap", "crashes", "delay"),
    [
        pytest.param(0.0, 0.0, 5, 0.0, id="no-backoff"),
        pytest.param(1.0, 10.0, 0, 1.0, id="zero-crashes"),
        pytest.param(1.0, 10.0, 1, 1.0, id="first"),
        pytest.param(1.0, 10.0, 3, 4.0, id="third-doubles-twice"),
        pytest.param(1.0, 10.0, 5, 10.0, id="capped"),
        pytest.param(0.5, 3.0, 2, 1.0, id="half"),
        pytest.param(1.0, 8.0, 100_000, 8.0, id="huge-no-overflow"),
    ],
)
def test_backoff_delay(initial: float, cap: float, crashes: int, delay: float) -> None:
    spec = make_spec(backoff_initial_s=initial, backoff_max_s=cap)
    assert sv.backoff_delay(spec, crashes) == delay


# -- boot, tree -----------------------------------------------------------------------


def test_boot_starts_children_one_at_a_time_in_order() -> None:
    state, effects = sv.handle(sv.initial(make_spec()), Boot(0.0))
    assert state.status is SupStatus.RUNNING
    assert effects == [Audit("supervisor.booted", {"supervisor": "sup"}), Start("a")]
    assert runs(state) == {"a": "starting", "b": "stopped", "c": "stopped"}
    state, effects = sv.handle(state, ChildStarted("a", 11, 0.5))
    assert effects == [
        Audit("agent.started", {"supervisor": "sup", "name": "a", "pid": 11, "restarts": 0}),
        Start("b"),
    ]
    state, trace = drive(state, effects, 1.0)
    assert trace == [Start("b"), Start("c")]
    assert runs(state) == dict.fromkeys("abc", "running")
    assert state.pending == Pending()


def test_tree_node() -> None:
    spec = SupervisorSpec(
        "sup", R41, children=(ChildSpec("a", "agent"), ChildSpec("t", "supervisor"))
    )
    state = running(spec)
    state, _ = step(state, crash("a", 1.0))
    node = {"state": "running", "restarts": 1, "paused": False}
    assert sv.tree_node(state) == {
        "name": "sup",
        "kind": "supervisor",
        "strategy": "rest_for_one",
        "state": "running",
        "restarts": 1,
        "children": [
            node
            | {"name": "a", "kind": "agent", "pid": state.child("a").pid, "last_error": "boom",
               "started_at": state.child("a").started_at},
            node
            | {"name": "t", "kind": "supervisor", "pid": state.child("t").pid, "last_error": "",
               "started_at": state.child("t").started_at},
        ],
    }


# -- strategies -----------------------------------------------------------------------


def stops(*names: str) -> list[Effect]:
    return [Stop(name, 5.0) for name in names]


def starts(*names: str) -> list[Effect]:
    return [Start(name) for name in names]


STRATEGY_CASES = [
    pytest.param(O41, "a", starts("a"), id="one_for_one-first"),
    pytest.param(O41, "b", starts("b"), id="one_for_one-middle"),
    pytest.param(O41, "c", starts("c"), id="one_for_one-last"),
    pytest.param(O4A, "a", stops("c", "b") + starts("a", "b", "c"), id="one_for_all-first"),
    pytest.param(O4A, "b", stops("c", "a") + starts("a", "b", "c"), id="one_for_all-middle"),
    pytest.param(O4A, "c", stops("b", "a") + starts("a", "b", "c"), id="one_for_all-last"),
    pytest.param(R41, "a", stops("c", "b") + starts("a", "b", "c"), id="rest_for_one-first"),
    pytest.param(R41, "b", stops("c") + starts("b", "c"), id="rest_for_one-middle"),
    pytest.param(R41, "c", starts("c"), id="rest_for_one-last"),
]


@pytest.mark.parametrize(("strategy", "crashed", "expected"), STRATEGY_CASES)
def test_strategy_restart_sequence(
    strategy: Strategy, crashed: str, expected: list[Effect]
) -> None:
    state, trace = step(running(make_spec(strategy)), crash(crashed, 1.0))
    assert trace == expected
    assert runs(state) == dict.fromkeys("abc", "running")
    restarted = {e.name for e in expected if isinstance(e, Start)}
    assert {c.name: c.restarts for c in state.children} == {n: int(n in restarted) for n in "abc"}
    assert state.restart_log == (1.0,) and state.restarts == 1


def test_one_for_all_first_step_stops_only_the_last_sibling() -> None:
    state, effects = sv.handle(running(make_spec(O4A)), crash("b", 1.0))
    # one row per restarted child: the crash is in b's row
    assert audit_types(effects) == ["agent.restarted"] * 3
    assert effects[0] == Audit("agent.restarted", {
        "supervisor": "sup", "name": "b", "restarts": 1, "delay_s": 0.0, "cause": "b",
        "reason": "boom"})
    assert ops(effects) == [Stop("c", 5.0)]
    assert runs(state) == {"a": "running", "b": "restarting", "c": "stopping"}
    state, effects = sv.handle(state, ChildExited("c", True, "killed", 2.0))
    assert ops(effects) == [Stop("a", 5.0)]  # the exit we asked for is not a crash
    assert audit_types(effects) == [] and state.restart_log == (1.0,)  # c's row said it
    state, effects = drive(state, effects, 2.0)
    assert runs(state) == dict.fromkeys("abc", "running")


def test_group_member_dying_before_its_stop_is_absorbed() -> None:
    state, effects = sv.handle(running(make_spec(O4A)), crash("b", 1.0))
    state, effects = sv.handle(state, crash("a", 1.5))  # queued for a stop, died first
    assert audit_types(effects) == [] and ops(effects) == []  # its restarted row stands
    assert state.restart_log == (1.0,) and state.child("a").run is ChildRun.RESTARTING
    state, trace = drive(state, [Stop("c", 5.0)], 2.0)
    assert trace == [Stop("c", 5.0), Start("a"), Start("b"), Start("c")]


def test_crash_during_the_start_phase_replans_the_group() -> None:
    state, _ = sv.handle(running(make_spec(R41)), crash("a", 1.0))
    state, _ = sv.handle(state, ChildExited("c", False, "stopped", 1.1))
    state, effects = sv.handle(state, ChildExited("b", False, "stopped", 1.2))
    assert ops(effects) == [Start("a")]
    state, effects = sv.handle(state, crash("a", 1.3))  # crashes while starting
    assert ops(effects) == [Start("a")] and state.restart_log == (1.0, 1.3)
    assert state.pending.starts == ("a", "b", "c")
    assert [c.restarts for c in state.children] == [2, 1, 1]


# -- restart types --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "abnormal", "restarted"),
    [
        pytest.param(PERM, False, True, id="permanent-normal"),
        pytest.param(PERM, True, True, id="permanent-abnormal"),
        pytest.param(TRANS, False, False, id="transient-normal"),
        pytest.param(TRANS, True, True, id="transient-abnormal"),
        pytest.param(TEMP, False, False, id="temporary-normal"),
        pytest.param(TEMP, True, False, id="temporary-abnormal"),
    ],
)
@pytest.mark.parametrize("strategy", [O41, O4A, R41])
def test_restart_types(
    strategy: Strategy, restart: RestartType, abnormal: bool, restarted: bool
) -> None:
    state = running(make_spec(strategy, (restart, PERM, PERM)))
    state, trace = step(state, crash("a", 1.0, abnormal))
    assert (Start("a") in trace) is restarted
    assert state.child("a").run is (ChildRun.RUNNING if restarted else ChildRun.STOPPED)
    assert len(state.restart_log) == int(restarted)  # no restart, no intensity
    if not restarted:
        assert trace == []  # and the siblings are left alone
    assert state.child("a").last_error == ("boom" if abnormal else "")


def test_temporary_sibling_is_stopped_not_restarted() -> None:
    state = running(make_spec(O4A, (PERM, TEMP, PERM)))
    state, trace = step(state, crash("a", 1.0))
    assert trace == [Stop("c", 5.0), Stop("b", 5.0), Start("a"), Start("c")]
    assert runs(state) == {"a": "running", "b": "stopped", "c": "running"}
    assert state.child("b").restarts == 0


def test_temporary_child_crashing_while_booting_is_not_retried() -> None:
    state, effects = sv.handle(sv.initial(make_spec(O41, (TEMP, PERM))), Boot(0.0))
    state, effects = sv.handle(state, crash("a", 0.1))
    assert ops(effects) == [Start("b")] and state.child("a").run is ChildRun.STOPPED


def test_permanent_child_crashing_while_booting_is_retried_first() -> None:
    state, _ = sv.handle(sv.initial(make_spec(O41, (PERM, PERM))), Boot(0.0))
    state, effects = sv.handle(state, crash("a", 0.1))
    assert ops(effects) == [Start("a")] and state.pending.starts == ("a", "b")


# -- intensity ------------------------------------------------------------------------


def crash_times(state: SupState, name: str, times: Iterable[float]) -> SupState:
    for t in times:
        state, _ = step(state, crash(name, t))
    return state


@pytest.mark.parametrize(
    ("max_restarts", "times", "fails"),
    [
        pytest.param(2, [1.0, 2.0], False, id="at-limit"),
        pytest.param(2, [1.0, 2.0, 3.0], True, id="one-too-many"),
        pytest.param(2, [1.0, 4.0, 6.5], False, id="oldest-slid-out"),
        pytest.param(1, [0.0, 5.0], True, id="window-boundary-inclusive"),
        pytest.param(1, [0.0, 5.01], False, id="just-outside-window"),
        pytest.param(0, [1.0], True, id="zero-allows-none"),
    ],
)
def test_intensity(max_restarts: int, times: list[float], fails: bool) -> None:
    state = crash_times(running(make_spec(max_restarts=max_restarts)), "b", times)
    assert (state.status is SupStatus.FAILED) is fails
    assert all(times[-1] - t <= 5.0 for t in state.restart_log)


def test_give_up_stops_everyone_in_reverse_order_then_escalates() -> None:
    state = crash_times(running(make_spec(O41, (PERM,) * 4, max_restarts=1)), "b", [1.0])
    state, effects = sv.handle(state, crash("b", 2.0))
    assert audit_types(effects) == ["agent.crashed", "supervisor.gave_up"]
    assert ops(effects) == [Stop("d", 5.0)]  # GiveUp waits until every child is down
    assert state.status is SupStatus.FAILED and state.child("b").run is ChildRun.FAILED
    with pytest.raises(Conflict, match="is failed: cannot start children"):
        sv.handle(state, StartChild("b", 2.0))
    state, trace = drive(state, effects, 2.5)
    reason = "child 'b' exited (boom): more than 1 restarts in 5s"
    assert trace == [Stop("d", 5.0), Stop("c", 5.0), Stop("a", 5.0), GiveUp(reason)]
    assert set(runs(state).values()) == {"failed"} and state.pending == Pending()
    state, effects = sv.handle(state, BackoffElapsed("b", 9.0))
    assert effects == []  # GiveUp is emitted once


def test_give_up_with_nothing_else_running_escalates_at_once() -> None:
    state = running(make_spec(O41, (PERM,), max_restarts=0))
    state, effects = sv.handle(state, ChildExited("a", False, "", 1.0))
    assert ops(effects) == [GiveUp("child 'a' exited (no reason): more than 0 restarts in 5s")]


def test_child_dying_on_its_own_while_giving_up() -> None:
    state = running(make_spec(max_restarts=0))
    state, _ = sv.handle(state, crash("a", 1.0))  # stopping c first
    state, effects = sv.handle(state, crash("b", 1.1))
    assert ops(effects) == [] and state.child("b").run is ChildRun.FAILED
    state, effects = sv.handle(state, ChildExited("c", False, "stopped", 1.2))
    assert ops(effects) == [GiveUp("child 'a' exited (boom): more than 0 restarts in 5s")]


# -- backoff --------------------------------------------------------------------------


def test_backoff_grows_and_is_capped() -> None:
    spec = make_spec(max_restarts=100, window_s=100.0, backoff_initial_s=1.0, backoff_max_s=5.0)
    state, delays, now = running(spec), [], 0.0
    for _ in range(5):
        now += 0.1
        state, trace = step(state, crash("a", now))
        delays += [e.delay_s for e in trace if isinstance(e, Schedule)]
        now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_waits_for_its_timer_and_ignores_stale_ones() -> None:
    state = running(make_spec(backoff_initial_s=1.0, backoff_max_s=5.0))
    state, effects = sv.handle(state, crash("a", 10.0))
    assert ops(effects) == [Schedule("a", 1.0)] and state.child("a").deadline == 11.0
    assert sv.handle(state, BackoffElapsed("a", 10.5)) == (state, [])  # too early
    assert sv.handle(state, BackoffElapsed("zz", 11.0)) == (state, [])  # unknown: stale
    state, effects = sv.handle(state, BackoffElapsed("a", 11.0))
    assert effects == [Start("a")] and state.child("a").run is ChildRun.STARTING


def test_backoff_streak_resets_after_a_long_run() -> None:
    spec = make_spec(max_restarts=10, window_s=5.0, backoff_initial_s=1.0, backoff_max_s=8.0)
    state, trace = step(running(spec), crash("a", 1.0))
    state, trace = step(state, crash("a", 2.5))
    assert trace[0] == Schedule("a", 2.0)
    state, trace = step(state, crash("a", 20.0))  # ran 15.5 s >= window: streak over
    assert trace[0] == Schedule("a", 1.0)


def test_group_restart_waits_for_the_backoff() -> None:
    state = running(make_spec(O4A, backoff_initial_s=1.0, backoff_max_s=1.0))
    state, effects = sv.handle(state, crash("b", 1.0))
    assert ops(effects) == [Schedule("b", 1.0), Stop("c", 5.0)]
    state, effects = sv.handle(state, ChildExited("c", False, "", 1.1))
    state, effects = sv.handle(state, ChildExited("a", False, "", 1.2))
    assert ops(effects) == []  # everyone is down, the group waits for b's backoff
    state, effects = sv.handle(state, BackoffElapsed("b", 2.0))
    assert ops(effects) == [Start("a")]


def test_backoff_elapsing_before_the_siblings_are_down() -> None:
    state = running(make_spec(O4A, backoff_initial_s=1.0, backoff_max_s=1.0))
    state, _ = sv.handle(state, crash("b", 1.0))
    state, effects = sv.handle(state, BackoffElapsed("b", 2.0))
    assert effects == [] and state.child("b").deadline is None
    state, trace = drive(state, [Stop("c", 5.0)], 2.1)
    assert trace == [Stop("c", 5.0), Stop("a", 5.0), Start("a"), Start("b"), Start("c")]


# -- pause and resume -----------------------------------------------------------------


def test_paused_child_is_not_restarted_until_resumed() -> None:
    state, effects = sv.handle(running(), Pause("b"))
    assert audit_types(effects) == ["agent.paused"] and ops(effects) == []
    state, effects = sv.handle(state, crash("b", 1.0))
    assert ops(effects) == [] and state.child("b").run is ChildRun.PAUSED
    assert state.restart_log == ()
    with pytest.raises(Conflict, match="is paused: resume it"):
        sv.handle(state, StartChild("b", 1.5))
    state, effects = sv.handle(state, Resume("b", 2.0))
    assert ops(effects) == [Start("b")] and not state.child("b").paused


def test_resume_of_a_running_child_only_clears_the_flag() -> None:
    state, _ = sv.handle(running(), Pause("a"))
    state, effects = sv.handle(state, Resume("a", 1.0))
    assert audit_types(effects) == ["agent.resumed"] and ops(effects) == []


def test_pause_cancels_a_pending_backoff() -> None:
    state = running(make_spec(backoff_initial_s=1.0, backoff_max_s=1.0))
    state, _ = sv.handle(state, crash("a", 1.0))
    state, _ = sv.handle(state, Pause("a"))
    assert state.child("a").run is ChildRun.PAUSED
    assert sv.handle(state, BackoffElapsed("a", 2.0)) == (state, [])


def test_pausing_the_held_group_member_releases_the_group() -> None:
    state = running(make_spec(O4A, backoff_initial_s=1.0, backoff_max_s=1.0))
    state, _ = sv.handle(state, crash("b", 1.0))
    state, _ = drive(state, [Stop("c", 5.0)], 1.1)  # a and c down, held by b's backoff
    state, effects = sv.handle(state, Pause("b"))
    assert ops(effects) == [Start("a")]
    state, trace = drive(state, effects, 1.2)
    assert trace == [Start("a"), Start("c")] and state.child("b").run is ChildRun.PAUSED


def test_paused_sibling_is_stopped_and_stays_paused() -> None:
    state, _ = sv.handle(running(make_spec(O4A)), Pause("c"))
    state, trace = step(state, crash("a", 1.0))
    assert trace == [Stop("c", 5.0), Stop("b", 5.0), Start("a"), Start("b")]
    assert state.child("c").run is ChildRun.PAUSED


def test_pausing_a_child_while_it_is_stopped_for_a_restart() -> None:
    state, _ = sv.handle(running(make_spec(O4A)), crash("a", 1.0))
    state, _ = sv.handle(state, Pause("c"))  # c is stopping for a's restart
    state, trace = drive(state, [Stop("c", 5.0)], 1.1)
    assert trace == [Stop("c", 5.0), Stop("b", 5.0), Start("a"), Start("b")]
    assert state.child("c").run is ChildRun.PAUSED


def test_boot_skips_paused_children() -> None:
    state, _ = sv.handle(running(), Pause("a"))
    state, _ = step(state, Shutdown(1.0))
    state, trace = step(state, Boot(2.0))
    assert trace == [Start("b"), Start("c")] and state.child("a").run is ChildRun.PAUSED


def test_pausing_a_child_queued_by_boot() -> None:
    state, _ = sv.handle(sv.initial(make_spec()), Boot(0.0))
    state, effects = sv.handle(state, Pause("b"))
    assert ops(effects) == [] and state.pending.starts == ("a", "c")
    state, trace = drive(state, [Start("a")], 0.1)
    assert trace == [Start("a"), Start("c")]


# -- operator stop/start, stop timeout, kill ------------------------------------------


def test_operator_stop_exit_is_not_a_crash() -> None:
    state, effects = sv.handle(running(), StopChild("b", 1.0))
    assert effects == [Stop("b", 5.0)] and state.child("b").deadline == 6.0
    state, effects = sv.handle(state, ChildExited("b", True, "killed", 1.5))
    assert audit_types(effects) == ["agent.stopped"] and ops(effects) == []
    assert state.child("b").run is ChildRun.STOPPED and state.restart_log == ()
    state, effects = sv.handle(state, StartChild("b", 2.0))
    assert effects == [Start("b")]


def test_stop_timeout_kills() -> None:
    state, _ = sv.handle(running(), StopChild("c", 1.0))
    assert sv.handle(state, StopTimeout("c", 3.0)) == (state, [])  # not due yet
    assert sv.handle(state, StopTimeout("zz", 6.0)) == (state, [])
    state, effects = sv.handle(state, StopTimeout("c", 6.0))
    assert ops(effects) == [Kill("c")] and audit_types(effects) == ["agent.killed"]
    assert sv.handle(state, StopTimeout("c", 12.0)) == (state, [])  # already killed
    state, effects = sv.handle(state, ChildExited("c", True, "killed", 6.1))
    assert state.child("c").run is ChildRun.STOPPED and ops(effects) == []
    assert sv.handle(state, StopTimeout("c", 12.0)) == (state, [])  # exited


def test_stop_reported_before_the_pid() -> None:
    state, _ = step(running(), StopChild("a", 1.0))
    state, _ = step(state, StartChild("a", 2.0))
    state, _ = sv.handle(state, crash("a", 3.0))
    assert state.child("a").run is ChildRun.STARTING
    state, effects = sv.handle(state, StopChild("a", 3.1))
    state, effects = sv.handle(state, ChildStarted("a", 77, 3.2))  # late pid report
    assert effects == [] and state.child("a").pid == 77
    assert state.child("a").run is ChildRun.STOPPING


def test_stop_cancels_a_pending_restart() -> None:
    state = running(make_spec(backoff_initial_s=1.0, backoff_max_s=1.0))
    state, _ = sv.handle(state, crash("a", 1.0))
    state, effects = sv.handle(state, StopChild("a", 1.2))
    assert ops(effects) == [] and audit_types(effects) == ["agent.stopped"]
    assert state.child("a").run is ChildRun.STOPPED
    assert sv.handle(state, BackoffElapsed("a", 2.0)) == (state, [])


def test_stop_wins_over_pause() -> None:
    state, _ = sv.handle(running(), Pause("a"))
    state, _ = sv.handle(state, crash("a", 1.0))
    state, _ = sv.handle(state, StopChild("a", 1.5))
    assert state.child("a").run is ChildRun.STOPPED and not state.child("a").paused


def test_stop_of_a_group_member_keeps_it_down() -> None:
    state, _ = sv.handle(running(make_spec(O4A)), crash("a", 1.0))
    state, effects = sv.handle(state, StopChild("c", 1.1))  # already stopping for a's restart
    assert ops(effects) == []
    state, trace = drive(state, [Stop("c", 5.0)], 1.2)
    assert trace == [Stop("c", 5.0), Stop("b", 5.0), Start("a"), Start("b")]
    assert state.child("c").run is ChildRun.STOPPED


def test_stop_of_the_child_boot_is_starting_moves_on() -> None:
    state, _ = sv.handle(sv.initial(make_spec()), Boot(0.0))
    state, effects = sv.handle(state, StopChild("a", 0.1))
    assert effects == [Stop("a", 5.0), Start("b")]
    state, effects = sv.handle(state, StopChild("c", 0.2))  # queued: cancel its start
    assert ops(effects) == [] and state.pending.starts == ("b",)


# -- shutdown -------------------------------------------------------------------------


def test_shutdown_stops_in_reverse_order_then_stops() -> None:
    state, effects = sv.handle(running(), Shutdown(1.0))
    assert effects == [Audit("supervisor.shutting_down", {"supervisor": "sup"}), Stop("c", 5.0)]
    assert state.status is SupStatus.STOPPING
    state, trace = drive(state, effects, 1.0)
    assert trace == [Stop("c", 5.0), Stop("b", 5.0), Stop("a", 5.0)]
    assert state.status is SupStatus.STOPPED and set(runs(state).values()) == {"stopped"}
    state, trace = step(state, Boot(2.0))
    assert trace == [Start("a"), Start("b"), Start("c")] and state.restart_log == ()


def test_shutdown_cancels_restarts_and_ignores_crashes() -> None:
    state = running(make_spec(backoff_initial_s=1.0, backoff_max_s=1.0))
    state, _ = sv.handle(state, crash("a", 1.0))
    state, effects = sv.handle(state, Shutdown(1.1))
    assert ops(effects) == [Stop("c", 5.0)] and state.child("a").run is ChildRun.STOPPED
    state, effects = sv.handle(state, crash("b", 1.2))  # dies on its own meanwhile
    assert ops(effects) == [] and state.child("b").run is ChildRun.STOPPED
    state, effects = sv.handle(state, ChildExited("c", False, "", 1.3))
    assert audit_types(effects) == ["agent.stopped", "supervisor.shut_down"]


def test_shutdown_with_nothing_running() -> None:
    state, _ = step(running(make_spec(O41, ())), Shutdown(1.0))
    assert state.status is SupStatus.STOPPED


# -- add and remove -------------------------------------------------------------------


def test_add_child_starts_it_when_running() -> None:
    state, effects = sv.handle(running(), AddChild(ChildSpec("d", "agent", TEMP), 1.0))
    assert effects == [
        Audit("agent.added", {"supervisor": "sup", "name": "d", "restart": "temporary"}),
        Start("d"),
    ]
    assert [c.name for c in state.spec.children] == ["a", "b", "c", "d"]
    assert [c.name for c in state.children] == ["a", "b", "c", "d"]


def test_add_child_to_a_stopped_supervisor_waits_for_boot() -> None:
    state, effects = sv.handle(sv.initial(make_spec()), AddChild(ChildSpec("d", "agent"), 0.0))
    assert ops(effects) == []
    state, trace = step(state, Boot(1.0))
    assert trace == [Start("a"), Start("b"), Start("c"), Start("d")]


def test_remove_child() -> None:
    state, _ = step(running(), StopChild("b", 1.0))
    state, effects = sv.handle(state, RemoveChild("b", 2.0))
    assert audit_types(effects) == ["agent.removed"]
    assert [c.name for c in state.children] == ["a", "c"]
    assert [c.name for c in state.spec.children] == ["a", "c"]


# -- invalid events -------------------------------------------------------------------


def failed_state() -> SupState:
    return step(running(make_spec(max_restarts=0)), crash("a", 1.0))[0]


def booting_state() -> SupState:
    return sv.handle(sv.initial(make_spec()), Boot(0.0))[0]


def paused_a() -> SupState:
    return sv.handle(running(), Pause("a"))[0]


def stopping_a() -> SupState:
    return sv.handle(running(), StopChild("a", 1.0))[0]


def stopped_a() -> SupState:
    return step(running(), StopChild("a", 1.0))[0]


def fresh() -> SupState:
    return sv.initial(make_spec())


C, NF, IR = Conflict, NotFound, InvalidRequest
INVALID = [  # id, state, event, error, message
    ("boot-twice", running, Boot(1.0), C, "is running: cannot boot"),
    ("started-while-running", running, ChildStarted("a", 1, 1.0), C, "no start was pending"),
    ("started-unknown", running, ChildStarted("zz", 1, 1.0), NF, "no child 'zz'"),
    ("exit-unknown", running, ChildExited("zz", True, "", 1.0), NF, "no child"),
    ("exit-while-down", booting_state, ChildExited("b", True, "", 1.0), C, "no process"),
    ("start-running", running, StartChild("a", 1.0), C, "is running: cannot start"),
    ("start-queued", booting_state, StartChild("b", 1.0), C, "queued to start"),
    ("stop-unknown", running, StopChild("zz", 1.0), NF, "no child"),
    ("stop-stopped", stopped_a, StopChild("a", 2.0), C, "nothing to stop"),
    ("stop-stopping", stopping_a, StopChild("a", 2.0), C, "nothing to stop"),
    ("pause-twice", paused_a, Pause("a"), C, "already paused"),
    ("pause-unknown", running, Pause("zz"), NF, "no child"),
    ("resume-unpaused", running, Resume("a", 1.0), C, "not paused"),
    ("add-duplicate", running, AddChild(ChildSpec("a", "agent"), 1.0), C, "already has"),
    ("add-not-a-spec", running, AddChild("d", 1.0), IR, "needs a ChildSpec"),  # type: ignore[arg-type]
    ("remove-running", running, RemoveChild("a", 1.0), C, "running: stop it before"),
    ("remove-queued", booting_state, RemoveChild("c", 1.0), C, "queued to start: stop it"),
    ("remove-unknown", running, RemoveChild("zz", 1.0), NF, "no child"),
    ("shutdown-stopped", fresh, Shutdown(1.0), C, "is stopped: cannot shut down"),
    ("start-before-boot", fresh, StartChild("a", 1.0), C, "is stopped: cannot start"),
    ("boot-failed", failed_state, Boot(2.0), C, "is failed"),
    ("shutdown-failed", failed_state, Shutdown(2.0), C, "is failed"),
    ("pause-failed", failed_state, Pause("a"), C, "is failed"),
    ("resume-failed", failed_state, Resume("a", 2.0), C, "is failed"),
    ("stop-failed", failed_state, StopChild("a", 2.0), C, "is failed"),
    ("remove-failed", failed_state, RemoveChild("a", 2.0), C, "is failed"),
    ("add-failed", failed_state, AddChild(ChildSpec("d", "agent"), 2.0), C, "is failed"),
    ("not-an-event", running, "boot", IR, "not a supervision event"),
]


@pytest.mark.parametrize(
    ("make", "event", "error", "message"), [pytest.param(*row[1:], id=row[0]) for row in INVALID]
)
def test_invalid_events_raise_and_leave_state_alone(
    make: Any, event: Any, error: type[NaosError], message: str
) -> None:
    state = make()
    copy = dataclasses.replace(state)
    with pytest.raises(error, match=message):
        sv.handle(state, event)
    assert state == copy
    sv.handle(state, BackoffElapsed("a", 99.0))  # still usable


def test_values_are_frozen_and_slotted() -> None:
    for value in (sv.initial(make_spec()), ChildSpec("a", "agent"), Stop("a", 1.0), Boot(0.0)):
        assert not hasattr(value, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(value)[0].name, "x")


# -- property: a shell that also injects crashes and operator commands -----------------

NAMES = ["a", "b", "c", "d", "zz"]


class Shell:
    """Performs effects like the real shell; keeps the timers and live processes."""

    def __init__(self, spec: SupervisorSpec) -> None:
        self.state, self.now = sv.initial(spec), 0.0
        self.alive: dict[str, int] = {}  # child name -> live process id
        self.incarnation: dict[str, int] = {}  # child name -> its live process's incarnation
        self.timers: list[tuple[str, str, int, float]] = []  # kind, name, pid, due
        self.next_pid, self.gave_up = 1, 0
        self.may_be_down: set[str] = set()  # children allowed to be down once all settles

    def apply(self, event: Event, *, must_succeed: bool = False) -> None:
        before = self.state
        try:
            self.state, effects = sv.handle(self.state, event)
        except NaosError:
            assert not must_succeed, event
            assert self.state is before
            return
        for effect in effects:
            self.perform(effect)
        self.track(event, before)
        check_invariants(self)

    def track(self, event: Event, before: SupState) -> None:
        match event:
            case Boot():
                self.may_be_down.clear()
            case StopChild(name):
                self.may_be_down.add(name)
            case StartChild(name) | Resume(name) if self.state.child(name).run is ChildRun.STARTING:
                self.may_be_down.discard(name)
            case AddChild(spec) | Activate(spec):
                self.may_be_down.discard(spec.name)
            case Reconcile(wanted, _, _, start):
                self.may_be_down -= {s.name for s in wanted if s.name in start}
            case ChildExited(name, False) if before.spec.child(name).restart is TRANS:
                self.may_be_down.add(name)

    def perform(self, effect: Effect) -> None:
        pid = self.alive.get(getattr(effect, "name", ""), 0)
        match effect:
            case Start(name):
                assert name not in self.alive, f"{name} started twice"
                assert not self.state.child(name).paused, f"{name} started while paused"
                self.alive[name], self.next_pid = self.next_pid, self.next_pid + 1
                self.incarnation[name] = self.state.child(name).incarnation
                self.timers.append(("started", name, self.alive[name], self.now))
            case Stop(name, timeout):
                self.timers += [
                    ("exit", name, pid, self.now),
                    ("timeout", name, pid, self.now + timeout),
                ]
            case Kill(name):
                self.timers.append(("killed", name, pid, self.now))
            case Schedule(name, delay):
                self.timers.append(("backoff", name, 0, self.now + delay))
            case Forget(name):
                del self.alive[name]
            case GiveUp():
                self.gave_up += 1

    def deliver(self, index: int) -> None:
        kind, name, pid, due = self.timers.pop(index % len(self.timers))
        self.now = max(self.now, due)
        if kind == "timeout":
            self.apply(StopTimeout(name, self.now), must_succeed=True)
        elif kind == "backoff":
            self.apply(BackoffElapsed(name, self.now), must_succeed=True)
        elif self.alive.get(name) != pid:
            return  # that process is gone
        elif kind == "started":
            self.apply(ChildStarted(name, pid, self.now), must_succeed=True)
        else:
            del self.alive[name]
            self.apply(ChildExited(name, kind == "killed", kind, self.now), must_succeed=True)

    def crash(self, index: int, abnormal: bool) -> None:
        if self.alive:
            name = sorted(self.alive)[index % len(self.alive)]
            del self.alive[name]
            self.apply(ChildExited(name, abnormal, "boom", self.now), must_succeed=True)

    def die(self, index: int, notice: bool | None) -> None:
        """A process dies as the real shell sees it: maybe after a notice, then
        gone (sometimes reported twice)."""
        if self.alive:
            name = sorted(self.alive)[index % len(self.alive)]
            inc = self.incarnation[name]
            if notice is not None:
                self.apply(ExitNotice(name, notice, "said why", inc), must_succeed=True)
            if notice and self.state.spec.child(name).restart is TRANS:
                self.may_be_down.add(name)  # a normal exit: not restarted
            del self.alive[name]
            self.apply(ProcessGone(name, self.now, inc), must_succeed=True)
            self.apply(ProcessGone(name, self.now, inc), must_succeed=True)  # a duplicate

    def drain(self) -> None:
        for _ in range(10_000):
            if not self.timers:
                return
            self.deliver(0)

    def bogus_report(self, name: str) -> None:
        """A report about a process that does not exist: the machine must refuse it."""
        if name not in self.alive:
            self.apply(ChildExited(name, True, "boom", self.now))
            self.apply(ChildStarted(name, 999, self.now))


def check_invariants(shell: Shell) -> None:
    state = shell.state
    up = {c.name for c in state.children if c.run in UP}
    assert up == set(shell.alive), (up, shell.alive)  # never both running and stopped
    assert [c.name for c in state.children] == [c.name for c in state.spec.children]
    for child in state.children:
        assert (child.pid is None) or child.run in (ChildRun.RUNNING, ChildRun.STOPPING)
        assert (child.run is not ChildRun.RUNNING) or child.pid is not None
        assert child.run in UP or (child.pid is None and child.started_at is None)
        assert child.run is not ChildRun.PAUSED or child.paused
        assert not child.paused or child.run in UP or child.name not in state.pending.starts
        if state.spec.child(child.name).restart is TEMP:
            assert child.restarts == 0
    log = state.restart_log
    assert list(log) == sorted(log) and (not log or log[-1] - log[0] <= state.spec.window_s)
    stopping = state.pending.stops
    assert set(stopping) <= up and len(set(stopping)) == len(stopping)
    if state.status is not SupStatus.RUNNING:
        assert state.pending.starts == ()
    if state.status is SupStatus.FAILED:
        assert all(
            c.run is ChildRun.FAILED or c.name in state.pending.stops for c in state.children
        )
    for child in state.children:  # a failed child is down and queued for nothing
        if child.run is ChildRun.FAILED:
            assert child.name not in state.pending.starts and child.name not in shell.alive
        assert not child.retiring or child.run in UP
    assert state.status is not SupStatus.STOPPED or not up
    assert shell.gave_up <= 1


OPS = st.sampled_from(
    ["start", "stop", "pause", "resume", "add", "remove", "shutdown", "boot", "stop_timeout",
     "backoff", "retire", "want", "activate", "deactivate"]
)  # fmt: skip
DELIVER = st.tuples(st.just("deliver"), st.integers(0, 30))
ACTIONS = st.one_of(
    *[DELIVER] * 4,  # weighted: without deliveries nothing happens
    st.tuples(st.just("crash"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("crash"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("die"), st.integers(0, 3), st.sampled_from([None, True, False])),
    st.tuples(st.just("op"), OPS, st.sampled_from(NAMES), st.sampled_from(list(RestartType))),
    st.tuples(st.just("bogus"), st.sampled_from(NAMES)),
    st.tuples(st.just("tick"), st.floats(0.0, 3.0)),
)
SPECS = st.builds(
    lambda strategy, restarts, max_restarts, window, backoff: make_spec(
        Strategy.ONE_FOR_ONE if strategy == "child" else strategy,
        restarts,
        max_restarts=max_restarts,
        window_s=window,
        backoff_initial_s=backoff,
        backoff_max_s=backoff * 4,
        intensity=sv.Intensity.CHILD if strategy == "child" else sv.Intensity.SUPERVISOR,
    ),
    st.sampled_from([*Strategy, "child", "child"]),
    st.lists(st.sampled_from([PERM, PERM, TRANS, TEMP]), min_size=3, max_size=4),
    st.sampled_from([1, 3, 50, 50]),
    st.floats(0.5, 10.0),
    st.sampled_from([0.0, 0.5]),
)


def operator_event(op: str, name: str, restart: RestartType, now: float,
                   state: SupState) -> Event:
    named: dict[str, Callable[[str, float], Event]] = {
        "start": StartChild, "stop": StopChild, "resume": Resume, "remove": RemoveChild,
        "stop_timeout": StopTimeout, "backoff": BackoffElapsed, "deactivate": Deactivate,
    }  # fmt: skip
    if op in named:
        return named[op](name, now)
    others = tuple(c for c in state.spec.children if c.name != name)
    if op == "retire":
        return Reconcile(others, now, stop=(name,))
    if op == "want":  # (a changed restart type is tested on its own)
        spec = next((c for c in state.spec.children if c.name == name), None)
        spec = spec or ChildSpec(name, "agent", restart)
        return Reconcile((*others, spec), now, start=(name,))
    if op == "activate":
        return Activate(ChildSpec(name, "agent", restart), now)
    unnamed: dict[str, Event] = {"shutdown": Shutdown(now), "boot": Boot(now), "pause": Pause(name)}
    return unnamed.get(op) or AddChild(ChildSpec(name, "agent", restart), now)


@settings(max_examples=200, deadline=None)
@given(SPECS, st.lists(ACTIONS, min_size=25, max_size=80))
def test_random_operation_keeps_invariants(
    spec: SupervisorSpec, actions: list[tuple[Any, ...]]
) -> None:
    shell = Shell(spec)
    shell.apply(Boot(0.0), must_succeed=True)
    shell.drain()  # start from a running tree
    for action in actions:
        match action:
            case ("deliver", index) if shell.timers:
                shell.deliver(index)
            case ("crash", index, abnormal):
                shell.crash(index, abnormal)
            case ("die", index, notice):
                shell.die(index, notice)
            case ("bogus", name):
                shell.bogus_report(name)
            case ("op", op, name, restart):
                shell.apply(operator_event(op, name, restart, shell.now, shell.state))
            case ("tick", seconds):
                shell.now += seconds
    shell.drain()  # every exit and timer processed: the machine settles
    assert not shell.timers
    state = shell.state
    assert state.pending == Pending() and state.status is not SupStatus.STOPPING
    transient = {ChildRun.STARTING, ChildRun.STOPPING, ChildRun.RESTARTING}
    assert not {c.run for c in state.children} & transient
    assert (state.status is SupStatus.FAILED) is (shell.gave_up == 1)
    per_child = state.spec.intensity is sv.Intensity.CHILD
    assert not per_child or shell.gave_up == 0  # one child's failure never takes the rest
    for child in state.children:  # no restart lost: whoever should run, runs
        if state.status is SupStatus.RUNNING and not child.paused:
            lawful = state.spec.child(child.name).restart is TEMP or child.name in shell.may_be_down
            lawful = lawful or (per_child and child.run is ChildRun.FAILED)
            assert lawful or child.run is ChildRun.RUNNING, (child, shell.may_be_down)
            assert not child.retiring
    if state.status is SupStatus.FAILED:  # nothing left running once all exits are in
        assert {c.run for c in state.children} <= {ChildRun.FAILED}


def test_sibling_reporting_its_pid_while_queued_for_a_stop_is_still_restarted() -> None:
    state, _ = step(running(make_spec(O4A)), StopChild("b", 1.0))
    state, _ = sv.handle(state, StartChild("b", 2.0))  # b is starting...
    state, effects = sv.handle(state, crash("a", 2.1))  # ...when a crashes
    assert ops(effects) == [Stop("c", 5.0)]
    state, effects = sv.handle(state, ChildStarted("b", 42, 2.2))
    assert ops(effects) == [] and state.pending.starts == ("a", "b", "c")
    state, trace = drive(state, [Stop("c", 5.0)], 2.3)
    assert trace == stops("c", "b") + starts("a", "b", "c")


def test_sibling_resumed_before_its_group_stop_is_restarted() -> None:
    state, _ = sv.handle(running(make_spec(O4A)), Pause("c"))
    state, effects = sv.handle(state, crash("a", 1.0))
    assert ops(effects) == [Stop("c", 5.0)]
    state, effects = sv.handle(state, Resume("c", 1.1))
    assert ops(effects) == []
    state, trace = drive(state, [Stop("c", 5.0)], 1.2)
    assert trace == stops("c", "b") + starts("a", "b", "c")
    assert runs(state) == dict.fromkeys("abc", "running")


# -- a crash reason that arrives after the exit ----------------------------------------


def test_reason_reported_after_the_exit_becomes_the_last_error() -> None:
    # A remote agent's exit notice comes from its node's admin and can overtake
    # the agent's own notice: the exit is "process died", the child restarts,
    # then the reason of that (first) incarnation arrives.
    state = running()
    first = state.child("a").incarnation
    state, trace = step(state, ProcessGone("a", 1.0, first))
    assert Start("a") in trace and state.child("a").run is ChildRun.RUNNING
    assert state.child("a").last_error == PROCESS_DIED
    before = state
    state, effects = sv.handle(state, ExitNotice("a", False, "handler raised X: boom", first))
    assert state.child("a").last_error == "handler raised X: boom" and effects == []
    # nothing else changes: the restart decision taken at the exit stands
    assert dataclasses.replace(state.child("a"), last_error=PROCESS_DIED,
                               unexplained=first) == before.child("a")
    assert state.restart_log == before.restart_log and state.pending == before.pending
    # only once
    assert sv.handle(state, ExitNotice("a", False, "again", first)) == (state, [])


def test_late_reason_never_replaces_a_reason_already_known() -> None:
    state = running()
    first = state.child("a").incarnation
    state, _ = step(state, ProcessGone("a", 1.0, first))
    state, _ = step(state, crash("a", 2.0))  # last_error "boom", from a later exit
    after, effects = sv.handle(state, ExitNotice("a", False, "older", first))
    assert after == state and effects == []


def test_reports_about_unknown_children_are_ignored() -> None:
    state = running()
    for event in (ExitNotice("zz", False, "why"), ProcessGone("zz", 1.0),
                  ChildSpawned("zz", 5, 1.0), ChildLost("zz", "gone", 1.0),
                  StartTimedOut("zz", "late", 1.0), Unplaceable("zz", "gpu", 1.0)):
        assert sv.handle(state, event) == (state, [])


# -- per-child intensity (the implicit supervisor, the root) ---------------------------


def child_spec(restarts: Iterable[RestartType] = (PERM,) * 3, **kw: Any) -> SupervisorSpec:
    """Like the implicit ``agents`` supervisor: each child on its own."""
    args: dict[str, Any] = {"max_restarts": 5, "window_s": 10.0, "backoff_initial_s": 0.5,
                            "backoff_max_s": 30.0, "intensity": sv.Intensity.CHILD} | kw
    return make_spec(O41, restarts, **args)


def loop(state: SupState, name: str, now: float, crashes: int
         ) -> tuple[SupState, list[Effect], float]:
    """Crash ``name`` while it starts, ``crashes`` times, honouring every backoff."""
    seen: list[Effect] = []
    for _ in range(crashes):
        state, effects = sv.handle(state, ChildExited(name, True, "cannot start: boom", now))
        seen += effects
        for effect in effects:
            if isinstance(effect, Schedule):
                now += effect.delay_s
                state, more = sv.handle(state, BackoffElapsed(name, now))
                seen += more
    return state, seen, now


def test_crash_loop_backs_off_then_fails_alone_with_one_row_and_one_alert() -> None:
    state = running(child_spec())
    state, seen, _ = loop(state, "b", 1.0, 6)
    assert [e.delay_s for e in seen if isinstance(e, Schedule)] == [0.5, 1.0, 2.0, 4.0]
    assert [e for e in ops(seen) if not isinstance(e, Schedule | Alert)] == [Start("b")] * 5
    assert audit_types(seen) == ["agent.restarted"] * 5 + ["agent.failed"]
    failed = next(e for e in seen if isinstance(e, Audit) and e.type == "agent.failed")
    assert failed.detail == {"supervisor": "sup", "name": "b", "reason": "cannot start: boom",
                             "crashes": 6, "restarts": 5}
    [alert] = [e for e in seen if isinstance(e, Alert)]
    assert "'b'" in alert.message and "not restarted until it is started again" in alert.message
    b = state.child("b")
    assert (b.run, b.restarts, b.last_error) == (ChildRun.FAILED, 5, "cannot start: boom")
    assert state.status is SupStatus.RUNNING and runs(state) == {
        "a": "running", "b": "failed", "c": "running"}
    assert sv.tree_node(state)["children"][1]["state"] == "failed"
    assert sv.handle(state, BackoffElapsed("b", 99.0)) == (state, [])  # nothing wakes it


def test_per_child_intensity_never_touches_siblings_nor_gives_up() -> None:
    state, now = running(child_spec(max_restarts=2)), 1.0
    for name in "abc":
        state, seen, now = loop(state, name, now, 3)
        assert {getattr(e, "name", name) for e in ops(seen)} == {name}
        assert not any(isinstance(e, GiveUp | Stop) for e in seen)
    assert state.status is SupStatus.RUNNING
    assert set(runs(state).values()) == {"failed"}


def test_a_healthy_run_ends_the_streak_and_the_first_restart_is_immediate() -> None:
    state = running(child_spec())
    state, _, now = loop(state, "a", 1.0, 3)  # streak 3
    state, _ = sv.handle(state, ChildStarted("a", 5, now))
    state, effects = sv.handle(state, crash("a", now + 10.0))  # ran 10 s = window: healthy
    assert ops(effects) == [Start("a")] and state.child("a").crashes == 1


def test_a_normal_exit_is_not_a_failure() -> None:
    state, _, now = loop(running(child_spec()), "a", 1.0, 3)
    state, _ = sv.handle(state, ChildStarted("a", 5, now))
    state, effects = sv.handle(state, crash("a", now + 0.1, abnormal=False))
    assert ops(effects) == [Start("a")] and state.child("a").crashes == 0
    assert audit_types(effects) == ["agent.restarted"]


def test_a_critical_child_is_restarted_at_once_forever() -> None:
    spec = SupervisorSpec("root", O41, max_restarts=1, intensity=sv.Intensity.CHILD,
                          backoff_initial_s=1.0, backoff_max_s=8.0,
                          children=(ChildSpec("beat", "service", critical=True),))
    state, seen, _ = loop(running(spec), "beat", 1.0, 30)
    assert ops(seen) == [Start("beat")] * 30
    assert state.child("beat").run is ChildRun.STARTING and state.child("beat").restarts == 30


@pytest.mark.parametrize(
    ("intensity", "critical", "crashes", "delay"),
    [
        pytest.param("supervisor", False, 1, 0.5, id="otp-first"),
        pytest.param("supervisor", False, 3, 2.0, id="otp-third"),
        pytest.param("child", False, 1, 0.0, id="child-first-free"),
        pytest.param("child", False, 2, 0.5, id="child-second"),
        pytest.param("child", False, 4, 2.0, id="child-fourth"),
        pytest.param("child", False, 50, 30.0, id="child-capped"),
        pytest.param("child", True, 50, 0.0, id="critical"),
    ],
)
def test_restart_delay(intensity: str, critical: bool, crashes: int, delay: float) -> None:
    spec = SupervisorSpec("s", O41, backoff_initial_s=0.5, backoff_max_s=30.0,
                          intensity=sv.Intensity(intensity),
                          children=(ChildSpec("a", "agent", critical=critical),))
    assert sv.restart_delay(spec, "a", crashes) == delay


def test_per_child_intensity_needs_one_for_one() -> None:
    with pytest.raises(InvalidRequest, match="per-child intensity needs the one_for_one"):
        make_spec(O4A, intensity=sv.Intensity.CHILD)
    with pytest.raises(InvalidRequest, match="invalid intensity"):
        make_spec(intensity="sometimes")


def failed_b() -> SupState:
    return loop(running(child_spec(max_restarts=0)), "b", 1.0, 1)[0]


def test_a_failed_child_is_cleared_by_an_operator() -> None:
    state = failed_b()
    assert state.child("b").run is ChildRun.FAILED
    started, effects = sv.handle(state, StartChild("b", 2.0))
    assert effects == [Start("b")] and started.child("b").crashes == 0
    started, effects = sv.handle(started, ChildStarted("b", 9, 2.1))
    assert audit_types(effects) == ["agent.started"]  # an operator's start, not a restart
    stopped, effects = sv.handle(state, StopChild("b", 2.0))
    assert ops(effects) == [] and stopped.child("b").run is ChildRun.STOPPED
    assert effects == [Audit("agent.stopped", {"supervisor": "sup", "name": "b",
                                               "reason": "failed state cleared"})]
    removed, effects = sv.handle(state, RemoveChild("b", 2.0))
    assert [c.name for c in removed.children] == ["a", "c"]
    with pytest.raises(Conflict, match=r"failed \(cannot start: boom\)"):
        sv.handle(state, Activate(ChildSpec("b", "agent"), 2.0))


# -- one audit row per restart ----------------------------------------------------------


def test_a_restart_writes_one_row_even_with_a_backoff() -> None:
    state = running(make_spec(backoff_initial_s=1.0, backoff_max_s=1.0))
    state, effects = sv.handle(state, crash("a", 1.0))
    assert effects == [
        Audit("agent.restarted", {"supervisor": "sup", "name": "a", "restarts": 1,
                                  "delay_s": 1.0, "cause": "a", "reason": "boom"}),
        Schedule("a", 1.0),
    ]
    state, effects = sv.handle(state, BackoffElapsed("a", 2.0))
    assert effects == [Start("a")]
    state, effects = sv.handle(state, ChildStarted("a", 77, 2.1))
    assert effects == [] and state.child("a").run is ChildRun.RUNNING


def test_audit_verbs_limit_the_rows() -> None:
    state = running(make_spec(audit_verbs=frozenset({"restarted"})))
    state, effects = sv.handle(state, StopChild("a", 1.0))
    assert audit_types(effects) == []
    state, effects = sv.handle(state, crash("b", 1.0))
    assert audit_types(effects) == ["agent.restarted"]


# -- incarnations and what an exit means -----------------------------------------------


def test_reports_of_a_replaced_process_are_stale() -> None:
    state = running()
    old = state.child("a").incarnation
    state, _ = sv.handle(state, ProcessGone("a", 1.0, old))  # restarted: a new incarnation
    assert state.child("a").incarnation == old + 1
    for event in (ProcessGone("a", 1.1, old), ChildStarted("a", 5, 1.1, old),
                  ChildSpawned("a", 5, 1.1, old), ChildLost("a", "x", 1.1, old),
                  ExitNotice("a", True, "", old), StartTimedOut("a", "late", 1.1, old)):
        assert sv.handle(state, event) == (state, []), event
    state, _ = sv.handle(state, ChildStarted("a", 6, 1.2, old + 1))
    assert sv.handle(state, ProcessGone("a", 1.3, old)) == (state, [])  # a duplicate


@pytest.mark.parametrize(
    ("notice", "stop_first", "restart", "restarted", "error"),
    [
        pytest.param(None, False, PERM, True, PROCESS_DIED, id="died"),
        pytest.param((False, "handler raised X"), False, PERM, True, "handler raised X",
                     id="crash-notice"),
        pytest.param((True, ""), False, PERM, True, "", id="done-permanent"),
        pytest.param((True, ""), False, TRANS, False, "", id="done-transient"),
        pytest.param((False, "handler raised X"), False, TRANS, True, "handler raised X",
                     id="crash-transient"),
        pytest.param(None, True, PERM, False, "", id="asked-to-stop"),
        pytest.param((False, "raised while stopping"), True, PERM, False, "",
                     id="crash-while-stopping"),
    ],
)
def test_what_an_exit_means(notice: tuple[bool, str] | None, stop_first: bool,
                            restart: RestartType, restarted: bool, error: str) -> None:
    state = running(make_spec(O41, (restart, PERM)))
    if stop_first:
        state, _ = sv.handle(state, StopChild("a", 0.5))
    if notice is not None:
        state, effects = sv.handle(state, ExitNotice("a", *notice))
        assert effects == []
    state, effects = sv.handle(state, ProcessGone("a", 1.0))
    assert (Start("a") in effects) is restarted
    assert state.child("a").last_error == error
    assert state.child("a").unexplained == (1 if error == PROCESS_DIED else 0)


def test_a_start_that_hangs_can_be_stopped_and_killed() -> None:
    state, _ = sv.handle(sv.initial(make_spec(O41, (PERM,))), Boot(0.0))
    state, effects = sv.handle(state, ChildSpawned("a", 4242, 0.1))
    assert effects == [] and state.child("a").pid == 4242  # loading, killable
    node = sv.tree_node(state)["children"][0]
    assert (node["state"], node["pid"]) == ("starting", 4242)
    state, effects = sv.handle(state, StopChild("a", 1.0))
    assert effects == [Stop("a", 5.0)]
    state, effects = sv.handle(state, StopTimeout("a", 6.0))
    assert ops(effects) == [Kill("a")]
    state, effects = sv.handle(state, ProcessGone("a", 6.1))
    assert state.child("a").run is ChildRun.STOPPED and audit_types(effects) == ["agent.stopped"]


def test_a_lost_child_is_forgotten_and_restarted() -> None:
    state, effects = sv.handle(running(), ChildLost("b", "node n2 lost: silent", 1.0))
    assert ops(effects) == [Forget("b"), Start("b")]
    assert state.child("b").last_error == "node n2 lost: silent"


def test_a_start_that_never_reports_is_given_up_on() -> None:
    state, _ = sv.handle(running(), crash("a", 1.0))  # restarting: STARTING again
    inc = state.child("a").incarnation
    state, effects = sv.handle(state, StartTimedOut("a", "did not start on n2", 16.0, inc))
    assert ops(effects) == [Forget("a"), Start("a")]
    state, _ = sv.handle(state, ChildStarted("a", 3, 16.1))
    assert sv.handle(state, StartTimedOut("a", "late", 31.0)) == (state, [])  # it started


def test_an_unplaceable_child_is_parked_paused() -> None:
    state, _ = sv.handle(running(), crash("a", 1.0))
    state, effects = sv.handle(state, Unplaceable("a", "no node has gpu", 1.0))
    assert audit_types(effects) == ["agent.paused", "agent.crashed"] and ops(effects) == []
    a = state.child("a")
    assert (a.run, a.paused) == (ChildRun.PAUSED, True)
    assert a.last_error == "unplaceable: no node has gpu"


# -- reconciling with the definitions, on-demand children --------------------------------


def specs(*names: str) -> tuple[ChildSpec, ...]:
    return tuple(ChildSpec(n, "agent") for n in names)


def test_reconcile_retires_adds_and_keeps() -> None:
    state, effects = sv.handle(running(), Reconcile(specs("a", "c", "d"), 1.0))
    assert ops(effects) == [Stop("b", 5.0), Start("d")]
    assert state.child("b").retiring
    state, effects = sv.handle(state, ProcessGone("b", 1.5))
    assert audit_types(effects) == ["agent.stopped", "agent.removed"] and ops(effects) == []
    assert [c.name for c in state.children] == ["a", "c", "d"]
    assert [c.name for c in state.spec.children] == ["a", "c", "d"]


def test_reconcile_removes_children_that_are_down_at_once() -> None:
    state, _ = step(running(child_spec(max_restarts=0)), crash("b", 1.0))  # b FAILED
    state, _ = sv.handle(state, crash("c", 1.0))  # c restarting? no: FAILED too
    state, effects = sv.handle(state, Reconcile(specs("a"), 2.0))
    assert ops(effects) == [] and [c.name for c in state.children] == ["a"]
    assert audit_types(effects) == ["agent.removed", "agent.removed"]


def test_reconcile_cancels_a_backoff_and_removes() -> None:
    state, _ = sv.handle(running(make_spec(backoff_initial_s=1.0, backoff_max_s=1.0)),
                         crash("b", 1.0))
    state, effects = sv.handle(state, Reconcile(specs("a", "c"), 1.2))
    assert ops(effects) == [] and state.find("b") is None
    assert sv.handle(state, BackoffElapsed("b", 2.0)) == (state, [])


def test_reconcile_start_gives_a_failed_or_waiting_child_a_fresh_start() -> None:
    state = failed_b()
    state, effects = sv.handle(state, Reconcile(specs("a", "b", "c"), 2.0, start=("b",)))
    assert ops(effects) == [Start("b")] and state.child("b").crashes == 0
    waiting, _ = sv.handle(running(make_spec(backoff_initial_s=9.0, backoff_max_s=9.0)),
                           crash("c", 1.0))
    waiting, effects = sv.handle(waiting, Reconcile(specs("a", "b", "c"), 1.1, start=("c",)))
    assert ops(effects) == [Start("c")]
    # a Reconcile without ``start`` leaves a failed child alone
    assert ops(sv.handle(failed_b(), Reconcile(specs("a", "b", "c"), 2.0))[1]) == []


def test_reconcile_updates_a_changed_spec_and_filters_by_kind() -> None:
    state, _ = sv.handle(running(), Reconcile(
        (ChildSpec("a", "agent", TEMP), *specs("b", "c")), 1.0))
    assert state.spec.child("a").restart is TEMP
    spec = SupervisorSpec("root", O41, children=(ChildSpec("beat", "service"),
                                                 ChildSpec("u", "supervisor")))
    state, effects = sv.handle(running(spec), Reconcile((), 1.0, kinds=("supervisor",)))
    assert ops(effects) == [Stop("u", 5.0)] and not state.child("beat").retiring


def test_wanted_again_while_retiring_starts_once_down() -> None:
    state, _ = sv.handle(running(), Reconcile(specs("a", "c"), 1.0))  # b stopping
    state, effects = sv.handle(state, Reconcile(specs("a", "b", "c"), 1.1))
    assert ops(effects) == [] and state.child("b").respawn
    state, effects = sv.handle(state, ProcessGone("b", 1.2))
    assert ops(effects) == [Start("b")] and state.child("b").run is ChildRun.STARTING


def test_on_demand_children_run_until_deactivated_or_stopped() -> None:
    state, effects = sv.handle(running(), Activate(ChildSpec("d", "agent"), 1.0))
    assert ops(effects) == [Start("d")] and state.child("d").on_demand
    state, _ = sv.handle(state, ChildStarted("d", 40, 1.1))
    assert sv.handle(state, Activate(ChildSpec("d", "agent"), 1.2))[1] == []  # running
    kept, effects = sv.handle(state, Reconcile(specs("a", "b", "c"), 1.3))
    assert ops(effects) == [] and kept.child("d").run is ChildRun.RUNNING
    _, effects = sv.handle(state, Reconcile(specs("a", "b", "c"), 1.3, stop=("d",)))
    assert ops(effects) == [Stop("d", 5.0)]
    idle, effects = sv.handle(state, Deactivate("d", 2.0))
    assert effects[0] == Audit("agent.deactivated", {"supervisor": "sup", "name": "d",
                                                     "reason": "idle"})
    assert ops(effects) == [Stop("d", 5.0)]
    again, effects = sv.handle(idle, Activate(ChildSpec("d", "agent"), 2.1))
    assert effects == [] and again.child("d").respawn  # back once it is down
    gone, _ = sv.handle(idle, ProcessGone("d", 2.2))
    assert gone.find("d") is None


def test_deactivate_leaves_wanted_children_alone() -> None:
    state = running()
    assert sv.handle(state, Deactivate("a", 1.0)) == (state, [])
    assert sv.handle(state, Deactivate("zz", 1.0)) == (state, [])
    wanted, _ = sv.handle(state, Activate(ChildSpec("d", "agent"), 1.0))
    wanted, _ = sv.handle(wanted, Reconcile(specs("a", "b", "c", "d"), 1.1))
    assert not wanted.child("d").on_demand  # its definition wants it now
    assert sv.handle(wanted, Deactivate("d", 2.0)) == (wanted, [])


def test_activate_restarts_a_stopped_child() -> None:
    state, _ = step(running(), StopChild("a", 1.0))
    state, effects = sv.handle(state, Activate(ChildSpec("a", "agent"), 2.0))
    assert effects == [Start("a")]
