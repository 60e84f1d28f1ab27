"""Pools as pure machines (stdlib + naosd.errors only): fan-out merging and
queue-mode dispatch, in the run vocabulary sagas and workflows share
(``actors/domain/run_events.py``).

Two machines, ``handle(state, event) -> (state, effects)`` like a saga's:

- a fan-out (:class:`FanOutState`, :func:`fan_out`, :func:`handle_fan_out`)
  asks its members (``RunStep``, at most ``limit`` at once), feeds each reply
  (``StepSucceeded`` / ``StepFailed``) to :func:`feed` and, once the outcome
  is decided or its timer fired, decides completed, partial or failed (the
  members that had not answered are ``cancelled``, those never asked
  ``not_sent``), asks the reducer agent if the pool has one, and ends with a
  ``Persist`` of the final record and a ``pool.run`` ``Audit``;
- a queue (:class:`QueueState`, :func:`handle_queue`) hands each task to
  :func:`pick`'s member (``RunStep``) within the pool's concurrency,
  :func:`release` s it when the task is done, and puts a task whose run
  failed for a reason of the daemon's own back in the queue after a backoff
  (its :data:`REQUEUE` policy): an accepted task never ends failed for that.

:func:`merge` is the fan-out decision over a list of results at once.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeAlias

from actors.domain.run_events import (
    ArmTimer,
    Audit,
    Persist,
    RetryPolicy,
    RunStep,
    RunTx,
    Start,
    StepFailed,
    StepSucceeded,
    TimerFired,
    dispatch,
)
from naosd.errors import Conflict, InvalidRequest, NotFound

PICK_STRATEGIES: Final = ("round-robin", "least-busy")
FAN_OUT_TIMEOUT: Final = "fan_out_timeout"
REDUCE_TIMEOUT: Final = "reduce_timeout"
REDUCE_STEP: Final = ":reduce"  # never an agent's name
REQUEUE_TIMER: Final = "requeue"
# A task whose run failed for the daemon's own reason goes back to the queue
# after this backoff, for as long as it takes (never given up: not its fault).
REQUEUE: Final = RetryPolicy(attempts=1, initial_s=0.2, backoff=2.0, max_s=10.0)
RUN_FINAL: Final = ("completed", "partial", "failed")


def clone_name(agent: str, i: int) -> str:
    return f"{agent}-c{i}"


def members_of(spec: dict[str, Any]) -> list[str]:
    """A pool definition's members: its agents, or its clones ``agent-c1..cN``."""
    if spec.get("agents"):
        return list(spec["agents"])
    return [clone_name(spec["agent"], i) for i in range(1, spec["size"] + 1)]


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


# -- a fan-out as a run ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FanOutSpec:
    """One fan-out of pool ``name``: ``merge`` is a strategy or ``"reducer"``."""

    name: str
    merge: str
    members: tuple[str, ...]
    limit: int
    timeout_s: float
    reducer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if self.merge == "reducer" and not self.reducer:
            raise InvalidRequest("merge reducer needs a reducer agent")
        if not isinstance(self.limit, int) or isinstance(self.limit, bool) or self.limit < 1:
            raise InvalidRequest(f"a fan-out's limit must be an integer >= 1, got {self.limit!r}")


@dataclass(frozen=True, slots=True)
class FanOutState:
    run_id: str
    spec: FanOutSpec
    record: dict[str, Any] = field(hash=False)  # the run's record as created
    feed: FeedState
    status: str = "pending"  # pending, running, reducing, then one of RUN_FINAL
    asked: tuple[str, ...] = ()
    errors: tuple[tuple[str, str], ...] = ()
    started_at: float = 0.0
    out: dict[str, Any] | None = field(default=None, hash=False)  # decided, while reducing


FanOutEvent: TypeAlias = Start | StepSucceeded | StepFailed | TimerFired
RunEffect: TypeAlias = RunStep | ArmTimer | Persist | Audit


def fan_out(run_id: str, spec: FanOutSpec, record: dict[str, Any]) -> FanOutState:
    """A fan-out of ``record["input"]`` to ``spec.members``; ``Start`` begins it."""
    strategy = "all" if spec.merge == "reducer" else spec.merge
    return FanOutState(run_id, spec, record, start(strategy, spec.members))


def handle_fan_out(state: FanOutState, event: FanOutEvent
                   ) -> tuple[FanOutState, list[RunEffect]]:
    """Apply ``event``: the new state and the effects to perform, in order.
    Replies nobody waits for (a cancelled member's, after the timeout) are
    dropped."""
    return dispatch(_FAN_OUT, _FanTx(state), event, "pool fan-out")


def fan_out_final(state: FanOutState) -> bool:
    return state.status in RUN_FINAL


class _FanTx(RunTx[FanOutState]):
    __slots__ = ()

    def __init__(self, state: FanOutState) -> None:
        super().__init__(state, "pool", lambda st: st.record)

    def ask(self, member: str) -> None:
        st = self.state
        self.set(asked=(*st.asked, member))
        key = f"{st.run_id}:{member}"
        self.effects.append(RunStep(member, member, st.record["input"], key, 1,
                                    st.spec.timeout_s))

    def ask_more(self) -> None:
        """Keep ``limit`` members asked and not heard from."""
        heard = {r.member for r in self.state.feed.results}
        busy = len([m for m in self.state.asked if m not in heard])
        for member in self.state.spec.members:
            if busy >= self.state.spec.limit:
                return
            if member not in self.state.asked:
                self.ask(member)
                busy += 1


def _fan_start(tx: _FanTx, ev: Start) -> None:
    if tx.state.status != "pending":
        raise Conflict(f"fan-out {tx.state.run_id!r} is {tx.state.status}: cannot start")
    tx.set(status="running", started_at=ev.now)
    tx.effects.append(ArmTimer(FAN_OUT_TIMEOUT, None, 0, tx.state.spec.timeout_s))
    tx.ask_more()


def _fan_reply(tx: _FanTx, ev: StepSucceeded | StepFailed) -> None:
    ok = isinstance(ev, StepSucceeded)
    if ev.step == REDUCE_STEP:
        if tx.state.status == "reducing":
            _reduced(tx, ev)
        return
    heard = {r.member for r in tx.state.feed.results}
    if tx.state.status != "running" or ev.step not in tx.state.asked or ev.step in heard:
        return  # a cancelled member's late reply, or a duplicate
    value = ev.output if isinstance(ev, StepSucceeded) else f"{ev.error_code}: {ev.message}"
    if not ok:
        tx.set(errors=(*tx.state.errors, (ev.step, value)))
    feed_state, decided = feed(tx.state.feed, ev.step, ok, value)
    tx.set(feed=feed_state)
    if decided:
        _decide(tx, ev.now)
    else:
        tx.ask_more()


def _fan_timer(tx: _FanTx, ev: TimerFired) -> None:
    if ev.kind == FAN_OUT_TIMEOUT and tx.state.status == "running":
        _decide(tx, ev.now)
    elif ev.kind == REDUCE_TIMEOUT and tx.state.status == "reducing":
        _reduced(tx, StepFailed(REDUCE_STEP, "timeout",
                                f"no reply within {tx.state.spec.timeout_s:g}s", ev.now))
    elif ev.kind not in (FAN_OUT_TIMEOUT, REDUCE_TIMEOUT):
        raise InvalidRequest(f"unknown pool fan-out timer kind {ev.kind!r}")


def _decide(tx: _FanTx, now: float) -> None:
    """The outcome, from the replies so far: completed, partial or failed.
    Members not heard from lost (``cancelled`` if asked, ``not_sent`` if
    not) when the strategy decided, and count as failed when time ran out."""
    st, spec = tx.state, tx.state.spec
    result = outcome(st.feed)
    left = list(pending(st.feed))
    timed_out = [] if result.decided else left
    losers = left if result.decided else []
    status, value, reason = result.status.value, result.value, result.reason
    if timed_out:
        status = "partial" if any(r.ok for r in st.feed.results) else "failed"
        reason = reason or f"no reply within {spec.timeout_s:g}s from {', '.join(timed_out)}"
        if spec.merge in ("all", "reducer") and status == "partial":
            value = [r.value for r in st.feed.results if r.ok]
    failed = result.failed + timed_out
    out = {"run_id": st.run_id, "pool": spec.name, "status": status, "value": value,
           "merge": spec.merge, "failed": failed,
           "cancelled": [m for m in losers if m in st.asked],
           "not_sent": [m for m in losers if m not in st.asked],
           "errors": dict(st.errors), "reason": reason,
           "replies": [{"member": r.member, "ok": r.ok, "value": r.value}
                       for r in st.feed.results]}
    if spec.merge == "reducer" and status != "failed":
        assert spec.reducer is not None  # FanOutSpec checks it
        tx.set(status="reducing", out=out)
        message = {"results": value, "failed": failed}
        tx.effects.append(RunStep(REDUCE_STEP, spec.reducer, message, "", 1, spec.timeout_s))
        tx.effects.append(ArmTimer(REDUCE_TIMEOUT, None, 0, spec.timeout_s))
        return
    _finish(tx, out, now)


def _reduced(tx: _FanTx, ev: StepSucceeded | StepFailed) -> None:
    out = dict(tx.state.out or {})
    if isinstance(ev, StepSucceeded):
        out["value"] = ev.output
    else:
        out |= {"status": "failed",
                "reason": f"reducer {tx.state.spec.reducer!r} failed: {ev.message}"}
    _finish(tx, out, ev.now)


def _finish(tx: _FanTx, out: dict[str, Any], now: float) -> None:
    """The final record (a slimmer one if outputs cannot be stored) and its audit row."""
    out = out | {"ms": round((now - tx.state.started_at) * 1000, 3)}
    tx.set(status=out["status"], out=out)
    record = tx.state.record
    slim = {**record, "status": out["status"], "reason": out["reason"], "failed": out["failed"]}
    tx.effects.append(Persist("finished", {**record, **out}, fallback=slim))
    tx.audit("run", status=out["status"], merge=out["merge"], failed=out["failed"],
             cancelled=out["cancelled"], ms=out["ms"])


_FAN_OUT: Final[dict[type[Any], Callable[[_FanTx, Any], None]]] = {
    Start: _fan_start,
    StepSucceeded: _fan_reply,
    StepFailed: _fan_reply,
    TimerFired: _fan_timer,
}


# -- the queue as a run ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueuedTask:
    task_id: str
    input: Any = field(default=None, hash=False)
    tries: int = 0  # runs that failed for the daemon's own reason


@dataclass(frozen=True, slots=True)
class QueueState:
    """Queue mode of one pool: what waits, what runs where."""

    name: str
    members: tuple[str, ...]
    pick: str = "round-robin"
    concurrency: int = 0  # 0: one task per member at once
    timeout_s: float = 30.0
    picks: PickState = PickState()
    queue: tuple[QueuedTask, ...] = ()
    running: tuple[tuple[QueuedTask, str], ...] = ()  # (task, member)
    waiting: tuple[QueuedTask, ...] = ()  # back off before going back to the queue
    gone: frozenset[str] = frozenset()  # ids a late Enqueued must not bring back

    def known(self, task_id: str) -> bool:
        return task_id in self.gone or any(
            t.task_id == task_id for t in (*self.queue, *self.waiting,
                                           *(t for t, _ in self.running)))


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Tasks to run (submitted, or found queued or in doubt at start).
    ``settled`` ones may be announced again later and must be ignored then."""

    tasks: tuple[QueuedTask, ...]
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Rescaled:
    """The pool's definition changed: its members (removed ones finish what
    they hold) and dispatch settings."""

    members: tuple[str, ...]
    pick: str
    concurrency: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class CancelQueued:
    """Take a task out of the queue before it is sent (Conflict if it was)."""

    task_id: str


QueueEvent: TypeAlias = Enqueued | StepSucceeded | StepFailed | TimerFired | Rescaled | CancelQueued


def handle_queue(state: QueueState, event: QueueEvent
                 ) -> tuple[QueueState, list[RunStep | ArmTimer]]:
    """Apply ``event``: the new state and the tasks to send (``RunStep``,
    step = task id) or to back off (``ArmTimer``).  ``StepSucceeded`` means
    the task is settled (its row holds its final status, whatever the agent
    answered); ``StepFailed`` means its run failed for the daemon's own
    reason: it goes back to the queue after a backoff.

    Raises:
        Conflict: a CancelQueued for a task already sent to a member.
    """
    effects: list[RunStep | ArmTimer] = []
    match event:
        case Enqueued(tasks, settled):
            fresh = tuple(t for t in tasks if not state.known(t.task_id))
            gone = state.gone | {t.task_id for t in tasks} if settled else state.gone
            state = replace(state, queue=(*state.queue, *fresh), gone=gone)
        case StepSucceeded(step=task_id) | StepFailed(step=task_id):
            state, task = _settle(state, task_id)
            if task is not None and isinstance(event, StepFailed):
                task = replace(task, tries=task.tries + 1)
                state = replace(state, waiting=(*state.waiting, task))
                effects.append(ArmTimer(REQUEUE_TIMER, task.task_id, task.tries,
                                        REQUEUE.delay(task.tries)))
        case TimerFired(kind=kind, step=task_id) if kind == REQUEUE_TIMER:
            back = tuple(t for t in state.waiting if t.task_id == task_id)
            state = replace(state, queue=(*back, *state.queue),
                            waiting=tuple(t for t in state.waiting if t.task_id != task_id))
        case Rescaled(members, pick_, concurrency, timeout_s):
            state = replace(state, members=tuple(members), pick=pick_, concurrency=concurrency,
                            timeout_s=timeout_s)
        case CancelQueued(task_id):
            state = _cancel(state, task_id)
        case _:
            raise InvalidRequest(f"not a pool queue event: {event!r}")
    return _dispatch(state, effects)


def _settle(state: QueueState, task_id: str) -> tuple[QueueState, QueuedTask | None]:
    entry = next(((t, m) for t, m in state.running if t.task_id == task_id), None)
    if entry is None:
        return state, None  # not ours (any more)
    running = tuple(e for e in state.running if e[0].task_id != task_id)
    with_member = entry[1]
    picks = release(state.picks, with_member) if state.picks.load(with_member) else state.picks
    return replace(state, running=running, picks=picks), entry[0]


def _cancel(state: QueueState, task_id: str) -> QueueState:
    if any(t.task_id == task_id for t, _ in state.running):
        raise Conflict(f"task {task_id!r} was already sent to a member")
    return replace(state, queue=tuple(t for t in state.queue if t.task_id != task_id),
                   waiting=tuple(t for t in state.waiting if t.task_id != task_id),
                   gone=state.gone | {task_id})


def _dispatch(state: QueueState, effects: list[RunStep | ArmTimer]
              ) -> tuple[QueueState, list[RunStep | ArmTimer]]:
    """Send queued tasks while the pool has room: its concurrency, and at
    least one task per member at once."""
    room = max(max(1, state.concurrency), len(state.members))
    while state.queue and state.members and len(state.running) < room:
        task, rest = state.queue[0], state.queue[1:]
        member, picks = pick(state.members, state.pick, state.picks)
        state = replace(state, queue=rest, picks=picks, running=(*state.running, (task, member)))
        effects.append(RunStep(task.task_id, member, task.input, task.task_id, task.tries + 1,
                               state.timeout_s))
    return state, effects


def queue_view(state: QueueState) -> dict[str, Any]:
    """What the queue holds now (for status and tests)."""
    return {"queued": [t.task_id for t in (*state.queue, *state.waiting)],
            "running": {t.task_id: m for t, m in state.running},
            "busy": dict(state.picks.busy)}
