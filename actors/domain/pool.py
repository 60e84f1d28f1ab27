"""Pool fan-out merging and queue-mode member selection (stdlib + naosd.errors only).

A pool actor shell sends one request to every member (fan-out mode) and feeds
each reply to :func:`feed`; once ``decided`` it may cancel the members still
running, then reads :func:`outcome`. :func:`merge` is the same decision over a
list of results at once. In queue mode the shell calls :func:`pick` for each
request and :func:`release` when the member answers.

Strategies (:func:`parse_strategy`):

- ``all``: every result, as a list in member-reply order. ``completed`` if all
  succeeded, ``partial`` with the successful values if some failed, ``failed``
  if none succeeded. Decided only when every member has answered.
- ``first``: the first success; decided as soon as one succeeds.
- ``majority``: the most common successful value, values compared as canonical
  JSON (sorted keys, so ``{"a":1,"b":2} == {"b":2,"a":1}``, but ``1 != 1.0``
  and ``1 != true``). A tie for the top is ``failed`` with the tied values in
  the reason. Decided early once no pending reply could change the leader.
- ``quorum:K``: ``K`` equal successful values (the first value, in reply
  order, to get its K-th vote); decided as soon as one has, or once no value
  can reach ``K`` any more.

Status: ``completed`` when the strategy is satisfied and no member failed,
``partial`` when it is satisfied but some member failed, ``failed`` otherwise
(``reason`` says why). ``failed`` in an outcome lists members that failed;
members not heard from yet are not in it.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from naosd.errors import Conflict, InvalidRequest, NotFound

PICK_STRATEGIES: Final = ("round-robin", "least-busy")


class MergeKind(enum.StrEnum):
    ALL = "all"
    FIRST = "first"
    MAJORITY = "majority"
    QUORUM = "quorum"


class MergeStatus(enum.StrEnum):
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Strategy:
    kind: MergeKind
    k: int = 0  # quorum size, only for QUORUM

    def __str__(self) -> str:
        return f"quorum:{self.k}" if self.kind is MergeKind.QUORUM else self.kind.value


@dataclass(frozen=True, slots=True)
class MemberResult:
    member: str
    ok: bool
    value: Any = None  # the result if ok, else the error (not compared)


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    status: MergeStatus
    value: Any
    failed: list[str]
    decided: bool
    reason: str = ""


def parse_strategy(text: object) -> Strategy:
    """``"all"``, ``"first"``, ``"majority"`` or ``"quorum:K"`` (K >= 1).

    Raises:
        InvalidRequest: anything else, with the accepted forms in the message.
    """
    forms = "use all, first, majority or quorum:K with an integer K >= 1"
    if not isinstance(text, str):
        raise InvalidRequest(f"merge strategy must be a string, got {text!r}: {forms}")
    name, sep, arg = text.strip().partition(":")
    if name == "quorum":
        if not sep or not arg.isdigit() or int(arg) < 1:
            raise InvalidRequest(f"invalid quorum size in {text!r}: {forms}")
        return Strategy(MergeKind.QUORUM, int(arg))
    if sep or name not in (MergeKind.ALL, MergeKind.FIRST, MergeKind.MAJORITY):
        raise InvalidRequest(f"unknown merge strategy {text!r}: {forms}")
    return Strategy(MergeKind(name))


def canonical(value: Any) -> str:
    """The canonical JSON text two results are compared by (raises InvalidRequest)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"result is not JSON-comparable: {exc}") from exc


def merge(
    strategy: Strategy | str, results: Sequence[MemberResult], expected: int | None = None
) -> MergeOutcome:
    """Merge ``results`` (in reply order) of ``expected`` members (default: all replied).

    Raises:
        InvalidRequest: a bad strategy, a duplicate member, more results than
            ``expected``, or a majority/quorum value that is not JSON.
    """
    strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    total = len(results) if expected is None else expected
    members = [r.member for r in results]
    if len(set(members)) != len(members):
        raise InvalidRequest("a member answered twice")
    if total < len(results):
        raise InvalidRequest(f"{len(results)} results for {total} members")
    pending = total - len(results)
    failed = [r.member for r in results if not r.ok]
    values = [r.value for r in results if r.ok]
    match strat.kind:
        case MergeKind.ALL:
            return _all(values, failed, pending)
        case MergeKind.FIRST:
            return _first(values, failed, pending)
        case MergeKind.MAJORITY:
            return _majority(values, failed, pending)
        case MergeKind.QUORUM:
            return _quorum(strat.k, total, values, failed, pending)


def _ok(failed: list[str]) -> MergeStatus:
    return MergeStatus.PARTIAL if failed else MergeStatus.COMPLETED


def _all(values: list[Any], failed: list[str], pending: int) -> MergeOutcome:
    decided = pending == 0
    if values:
        return MergeOutcome(_ok(failed), values, failed, decided)
    return MergeOutcome(MergeStatus.FAILED, None, failed, decided, "no member succeeded")


def _first(values: list[Any], failed: list[str], pending: int) -> MergeOutcome:
    if values:
        return MergeOutcome(_ok(failed), values[0], failed, True)
    return MergeOutcome(MergeStatus.FAILED, None, failed, pending == 0, "no member succeeded")


def _votes(values: list[Any]) -> list[tuple[Any, int]]:
    """(value, votes), most votes first; ties keep first-seen order.

    Equal values are counted by canonical JSON; each group is represented by the
    first value seen, so the caller gets a reply as it was, not a JSON round-trip.
    """
    first: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    for value in values:
        text = canonical(value)
        first.setdefault(text, value)
        counts[text] += 1
    return [(first[text], n) for text, n in counts.most_common()]


def _majority(values: list[Any], failed: list[str], pending: int) -> MergeOutcome:
    votes = _votes(values)
    if not votes:
        return MergeOutcome(MergeStatus.FAILED, None, failed, pending == 0, "no member succeeded")
    top = votes[0][1]
    second = votes[1][1] if len(votes) > 1 else 0
    decided = pending == 0 or top > second + pending  # nobody can catch up
    tied = [canonical(value) for value, n in votes if n == top]
    if len(tied) > 1:
        reason = f"no majority: {len(tied)} results tie with {top} votes each: {', '.join(tied)}"
        return MergeOutcome(MergeStatus.FAILED, None, failed, decided, reason)
    return MergeOutcome(_ok(failed), votes[0][0], failed, decided)


def _quorum(k: int, total: int, values: list[Any], failed: list[str], pending: int) -> MergeOutcome:
    # The winner is the first value (in reply order) to get its k-th vote, so
    # replies that arrive after the decision never change it.
    counts: Counter[str] = Counter()
    for value in values:
        text = canonical(value)
        counts[text] += 1
        if counts[text] >= k:
            return MergeOutcome(_ok(failed), value, failed, True)
    best = max(counts.values(), default=0)
    if k > total:
        reason = f"quorum of {k} is impossible with {total} members"
    else:
        reason = f"no {k} members agreed (best agreement: {best})"
    decided = pending == 0 or best + pending < k
    return MergeOutcome(MergeStatus.FAILED, None, failed, decided, reason)


# -- incremental form -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedState:
    """The replies so far of one fan-out to ``members``."""

    strategy: Strategy
    members: tuple[str, ...]
    results: tuple[MemberResult, ...] = ()


def start(strategy: Strategy | str, members: Sequence[str]) -> FeedState:
    """A fan-out to ``members`` with nothing heard yet (raises InvalidRequest)."""
    strat = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    if not members:
        raise InvalidRequest("a pool fan-out needs at least one member")
    if len(set(members)) != len(members):
        raise InvalidRequest("duplicate pool members")
    return FeedState(strat, tuple(members))


def feed(state: FeedState, member: str, ok: bool, value: Any) -> tuple[FeedState, bool]:
    """Record ``member``'s reply; ``decided`` is True once the outcome cannot change.

    Raises:
        NotFound: ``member`` is not part of this fan-out.
        Conflict: ``member`` already replied.
    """
    if member not in state.members:
        raise NotFound(f"{member!r} is not a member of this fan-out")
    if any(r.member == member for r in state.results):
        raise Conflict(f"member {member!r} already replied")
    state = replace(state, results=(*state.results, MemberResult(member, ok, value)))
    return state, outcome(state).decided


def outcome(state: FeedState) -> MergeOutcome:
    """The merge of the replies so far, knowing how many are still pending."""
    return merge(state.strategy, state.results, len(state.members))


def pending(state: FeedState) -> tuple[str, ...]:
    """Members not heard from: the ones to cancel once decided."""
    heard = {r.member for r in state.results}
    return tuple(m for m in state.members if m not in heard)


# -- queue mode -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PickState:
    cursor: int = 0  # round-robin position (also breaks least-busy ties fairly)
    busy: tuple[tuple[str, int], ...] = ()  # requests in flight per member

    def load(self, member: str) -> int:
        return dict(self.busy).get(member, 0)


def pick(members: Sequence[str], strategy: str, state: PickState) -> tuple[str, PickState]:
    """Choose the member for the next queued request and count it as busy.

    ``round-robin`` cycles through ``members``; ``least-busy`` takes the member
    with the fewest requests in flight, ties going to the next in round-robin order.

    Raises:
        InvalidRequest: no members, or an unknown strategy.
    """
    if not members:
        raise InvalidRequest("the pool has no members to pick from")
    if strategy not in PICK_STRATEGIES:
        raise InvalidRequest(f"unknown pick strategy {strategy!r}: use round-robin or least-busy")
    n = len(members)
    order = [members[(state.cursor + i) % n] for i in range(n)]
    chosen = order[0]
    if strategy == "least-busy":
        chosen = min(order, key=state.load)  # min keeps the first of equals
    index = list(members).index(chosen)
    return chosen, replace(state, cursor=(index + 1) % n, busy=_add(state, chosen, 1))


def release(state: PickState, member: str) -> PickState:
    """``member`` answered a queued request (raises Conflict if it had none)."""
    if state.load(member) <= 0:
        raise Conflict(f"member {member!r} has no request in flight")
    return replace(state, busy=_add(state, member, -1))


def _add(state: PickState, member: str, delta: int) -> tuple[tuple[str, int], ...]:
    busy = dict(state.busy)
    busy[member] = busy.get(member, 0) + delta
    return tuple(sorted((m, n) for m, n in busy.items() if n))
