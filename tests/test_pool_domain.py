"""Pool merge strategies, the incremental feed and queue-mode picking (actors/domain/pool.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.domain import pool
from actors.domain.pool import MemberResult, MergeKind, MergeStatus, PickState, Strategy
from naosd.errors import Conflict, InvalidRequest, NotFound

COMPLETED, PARTIAL, FAILED = MergeStatus.COMPLETED, MergeStatus.PARTIAL, MergeStatus.FAILED


def res(*spec: tuple[str, Any] | str) -> list[MemberResult]:
    """("m1", value) is a success, "m2" alone a failure."""
    out = []
    for item in spec:
        if isinstance(item, str):
            out.append(MemberResult(item, False, "boom"))
        else:
            out.append(MemberResult(item[0], True, item[1]))
    return out


# -- parse_strategy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "strategy"),
    [
        pytest.param("all", Strategy(MergeKind.ALL), id="all"),
        pytest.param("first", Strategy(MergeKind.FIRST), id="first"),
        pytest.param("majority", Strategy(MergeKind.MAJORITY), id="majority"),
        pytest.param("quorum:2", Strategy(MergeKind.QUORUM, 2), id="quorum"),
        pytest.param(" quorum:10 ", Strategy(MergeKind.QUORUM, 10), id="padded"),
    ],
)
def test_parse_strategy(text: str, strategy: Strategy) -> None:
    assert pool.parse_strategy(text) == strategy
    assert str(strategy) == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("quorum", "invalid quorum size", id="quorum-no-k"),
        pytest.param("quorum:", "invalid quorum size", id="quorum-empty-k"),
        pytest.param("quorum:0", "invalid quorum size", id="quorum-zero"),
        pytest.param("quorum:-1", "invalid quorum size", id="quorum-negative"),
        pytest.param("quorum:two", "invalid quorum size", id="quorum-word"),
        pytest.param("best", "unknown merge strategy", id="unknown"),
        pytest.param("all:2", "unknown merge strategy", id="arg-on-all"),
        pytest.param("", "unknown merge strategy", id="empty"),
        pytest.param(3, "must be a string", id="not-a-string"),
    ],
)
def test_parse_strategy_rejects(text: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as info:
        pool.parse_strategy(text)
    assert "quorum:K" in str(info.value)


# -- merge ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "results", "status", "value", "failed"),
    [
        pytest.param("all", res(("a", 1), ("b", 2)), COMPLETED, [1, 2], [], id="all-ok"),
        pytest.param("all", res(("a", 1), "b", ("c", 3)), PARTIAL, [1, 3], ["b"], id="all-partial"),
        pytest.param("all", res("a", "b"), FAILED, None, ["a", "b"], id="all-failed"),
        pytest.param(
            "first", res("a", ("b", 2), ("c", 3)), PARTIAL, 2, ["a"], id="first-after-failure"
        ),
        pytest.param("first", res(("a", 1), ("b", 2)), COMPLETED, 1, [], id="first-ok"),
        pytest.param("first", res("a", "b"), FAILED, None, ["a", "b"], id="first-none"),
        pytest.param(
            "majority",
            res(("a", {"x": 1, "y": 2}), ("b", 9), ("c", {"y": 2, "x": 1})),
            COMPLETED,
            {"x": 1, "y": 2},
            [],
            id="majority-canonical-json",
        ),
        pytest.param(
            "majority",
            res(("a", 1), ("b", 1), ("c", 2), "d"),
            PARTIAL,
            1,
            ["d"],
            id="majority-with-failure",
        ),
        pytest.param("majority", res(("a", 1), ("b", 2)), FAILED, None, [], id="majority-tie"),
        pytest.param(
            "majority", res(("a", 1), ("b", 1.0)), FAILED, None, [], id="majority-int-vs-float"
        ),
        pytest.param("majority", res("a", "b"), FAILED, None, ["a", "b"], id="majority-none"),
        pytest.param(
            "quorum:2", res(("a", "x"), ("b", "y"), ("c", "x")), COMPLETED, "x", [], id="quorum-met"
        ),
        pytest.param(
            "quorum:2",
            res(("a", "x"), "b", ("c", "x")),
            PARTIAL,
            "x",
            ["b"],
            id="quorum-met-with-failure",
        ),
        pytest.param(
            "quorum:2",
            res(("a", "x"), ("b", "y"), ("c", "z")),
            FAILED,
            None,
            [],
            id="quorum-disagree",
        ),
        pytest.param(
            "quorum:3", res(("a", "x"), ("b", "x")), FAILED, None, [], id="quorum-too-big"
        ),
    ],
)
def test_merge(
    strategy: str, results: list[MemberResult], status: MergeStatus, value: Any, failed: list[str]
) -> None:
    out = pool.merge(strategy, results)
    assert (out.status, out.value, out.failed, out.decided) == (status, value, failed, True)
    assert bool(out.reason) == (status is FAILED)


@pytest.mark.parametrize(
    ("strategy", "results", "reason"),
    [
        pytest.param(
            "majority",
            res(("a", 1), ("b", [2])),
            r"2 results tie with 1 votes each: 1, \[2\]",
            id="tie",
        ),
        pytest.param(
            "quorum:3",
            res(("a", 1), ("b", 1)),
            "quorum of 3 is impossible with 2 members",
            id="impossible",
        ),
        pytest.param(
            "quorum:2",
            res(("a", 1), ("b", 2)),
            r"no 2 members agreed \(best agreement: 1\)",
            id="disagree",
        ),
        pytest.param("all", res("a"), "no member succeeded", id="none"),
    ],
)
def test_failure_reasons(strategy: str, results: list[MemberResult], reason: str) -> None:
    out = pool.merge(strategy, results)
    assert out.status is FAILED
    assert re.search(reason, out.reason), out.reason


@pytest.mark.parametrize(
    ("strategy", "results", "expected", "decided"),
    [
        pytest.param("all", res(("a", 1)), 2, False, id="all-waits"),
        pytest.param("first", res("a"), 3, False, id="first-waits-after-failure"),
        pytest.param("first", res("a", ("b", 1)), 3, True, id="first-decides-on-success"),
        pytest.param("majority", res(("a", 1), ("b", 1)), 3, True, id="majority-unbeatable"),
        pytest.param("majority", res(("a", 1), ("b", 2)), 3, False, id="majority-open"),
        pytest.param("majority", res(("a", 1)), 3, False, id="majority-one-vote"),
        pytest.param("quorum:2", res(("a", 1), ("b", 1)), 5, True, id="quorum-reached"),
        pytest.param("quorum:3", res(("a", 1), ("b", 2), "c"), 4, True, id="quorum-hopeless"),
        pytest.param("quorum:2", res(("a", 1), ("b", 2)), 3, False, id="quorum-open"),
    ],
)
def test_merge_decides_early(
    strategy: str, results: list[MemberResult], expected: int, decided: bool
) -> None:
    assert pool.merge(strategy, results, expected).decided is decided


@pytest.mark.parametrize(
    ("results", "expected", "message"),
    [
        pytest.param(res(("a", 1), ("a", 2)), None, "answered twice", id="duplicate"),
        pytest.param(res(("a", 1), ("b", 2)), 1, "2 results for 1 members", id="too-many"),
        pytest.param(res(("a", {1, 2})), None, "not JSON-comparable", id="set-value"),
        pytest.param(res(("a", float("nan"))), None, "not JSON-comparable", id="nan"),
    ],
)
def test_merge_rejects(results: list[MemberResult], expected: int | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        pool.merge("majority", results, expected)


def test_majority_returns_the_reply_as_given() -> None:
    out = pool.merge(Strategy(MergeKind.MAJORITY), res(("a", (1, 2)), ("b", [1, 2])))
    assert out.value == (1, 2)


# -- feed -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "replies", "decided_after", "status", "value"),
    [
        pytest.param(
            "first", [("a", False, "e"), ("b", True, 7), ("c", True, 8)], 2, PARTIAL, 7, id="first"
        ),
        pytest.param(
            "quorum:2",
            [("a", True, 1), ("b", True, 2), ("c", True, 2)],
            3,
            COMPLETED,
            2,
            id="quorum",
        ),
        pytest.param(
            "majority",
            [("a", True, 5), ("b", True, 5), ("c", True, 6)],
            2,
            COMPLETED,
            5,
            id="majority",
        ),
        pytest.param(
            "all", [("a", True, 1), ("b", False, "e"), ("c", True, 3)], 3, PARTIAL, [1, 3], id="all"
        ),
    ],
)
def test_feed_stops_early(
    strategy: str,
    replies: list[tuple[str, bool, Any]],
    decided_after: int,
    status: MergeStatus,
    value: Any,
) -> None:
    state = pool.start(strategy, ["a", "b", "c"])
    for i, (member, ok, reply) in enumerate(replies, 1):  # noqa: B007 (read after the loop)
        state, decided = pool.feed(state, member, ok, reply)
        if decided:
            break
    assert i == decided_after
    out = pool.outcome(state)
    assert (out.status, out.value, out.decided) == (status, value, True)
    assert pool.pending(state) == tuple(m for m, _, _ in replies[decided_after:])


def test_feed_rejects_strangers_and_repeats() -> None:
    state = pool.start("all", ["a", "b"])
    with pytest.raises(NotFound, match="not a member"):
        pool.feed(state, "z", True, 1)
    state, _ = pool.feed(state, "a", True, 1)
    with pytest.raises(Conflict, match="already replied"):
        pool.feed(state, "a", True, 1)


@pytest.mark.parametrize(
    ("strategy", "members", "message"),
    [
        pytest.param("all", [], "at least one member", id="no-members"),
        pytest.param("all", ["a", "a"], "duplicate", id="duplicates"),
        pytest.param("most", ["a"], "unknown merge strategy", id="bad-strategy"),
    ],
)
def test_start_rejects(strategy: str, members: list[str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        pool.start(strategy, members)


@settings(max_examples=200, deadline=None)
@given(
    strategy=st.sampled_from(["all", "first", "majority", "quorum:1", "quorum:2", "quorum:3"]),
    replies=st.lists(st.tuples(st.booleans(), st.integers(0, 2)), min_size=1, max_size=6),
)
def test_early_decision_never_changes_the_outcome(
    strategy: str, replies: list[tuple[bool, int]]
) -> None:
    members = [f"m{i}" for i in range(len(replies))]
    state = pool.start(strategy, members)
    decided_at = None
    for member, (ok, value) in zip(members, replies, strict=True):
        state, decided = pool.feed(state, member, ok, value)
        if decided and decided_at is None:
            decided_at = pool.outcome(state)
    final = pool.outcome(state)
    assert final.decided
    assert decided_at is not None
    assert (decided_at.status is FAILED) == (final.status is FAILED)
    if strategy != "all":
        assert decided_at.value == final.value


# -- pick -----------------------------------------------------------------------------


def test_round_robin_cycles() -> None:
    state, seen = PickState(), []
    for _ in range(5):
        member, state = pool.pick(["a", "b", "c"], "round-robin", state)
        seen.append(member)
    assert seen == ["a", "b", "c", "a", "b"]
    assert state.load("a") == 2


def test_least_busy_prefers_idle_members_and_rotates_ties() -> None:
    members, state, seen = ["a", "b", "c"], PickState(), []
    for _ in range(3):
        member, state = pool.pick(members, "least-busy", state)
        seen.append(member)
    state = pool.release(state, "b")
    member, state = pool.pick(members, "least-busy", state)
    seen.append(member)
    state = pool.release(pool.release(state, "a"), "c")
    member, state = pool.pick(members, "least-busy", state)
    seen.append(member)
    assert seen == ["a", "b", "c", "b", "c"]  # a and c idle: c is next in rotation


@pytest.mark.parametrize(
    ("members", "strategy", "message"),
    [
        pytest.param([], "round-robin", "no members", id="empty"),
        pytest.param(["a"], "random", "unknown pick strategy", id="strategy"),
    ],
)
def test_pick_rejects(members: list[str], strategy: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        pool.pick(members, strategy, PickState())


def test_release_without_work_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="no request in flight"):
        pool.release(PickState(), "a")


def test_pick_survives_a_shrinking_pool() -> None:
    _, state = pool.pick(["a", "b", "c"], "round-robin", PickState(cursor=2))
    member, _ = pool.pick(["a", "b"], "round-robin", state)
    assert member == "a"
