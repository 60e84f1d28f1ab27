"""RunDriver: one durable run's pure machine, driven inside an actor.

The machine decides (``actors/domain``); the driver feeds it events and
performs its effects through the actor that hosts it (a coordinator hosts
one run, a pool actor one per fan-out), dispatching on the effect types of
the shared run vocabulary:

- ``Persist`` and ``Audit`` of one transition become ONE ``RunChange``,
  numbered ``seq`` (1, 2, ... within the driver's ``epoch``).  naosd commits
  a run's changes in that order, so the driver never waits for a commit
  before it goes on;
- ``RunStep`` / ``RunCompensation`` become a ``RunAgentStep`` port request
  that carries the transition's change: naosd commits it, THEN asks the
  agent ("step started" is on disk before the step's message leaves); the
  answer comes back as the event :func:`reply_event` makes of it;
- a transition with no agent to ask is sent alone (``SaveRun``);
- ``ArmTimer`` becomes ``wakeupAfter``; the machine ignores stale timers.

Let it crash: a port request naosd could not serve (a failed commit, a
stale epoch, naosd unable to reach agents) is reported to the host as a
crash; its supervisor restarts the run from its durable record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any, Protocol

from actors.domain.run_events import (
    ArmTimer,
    Audit,
    Persist,
    RunCompensation,
    RunStep,
    reply_event,
)
from actors.messages import PortReply, PortRequest
from actors.orch_messages import RunAgentStep, RunChange, SaveRun
from naosd.errors import NaosError

SLACK_S = 1.0  # an agent call outlives the step's timer: the timer decides


class Host(Protocol):
    """What a driver needs from the actor hosting it."""

    def ask_port(self, kind: type[PortRequest], then: Callable[[PortReply], None],
                 **fields: Any) -> str: ...

    def wakeupAfter(self, timePeriod: timedelta, payload: Any = None) -> None: ...

    def run_crashed(self, driver: RunDriver, reason: str) -> None: ...

    def run_done(self, driver: RunDriver) -> None: ...


def change_of(effects: list[Any]) -> RunChange | None:
    """The writes of one transition: its last record and all its audit rows."""
    record = fallback = None
    audits: list[tuple[str, dict[str, Any]]] = []
    for effect in effects:
        match effect:
            case Persist(record=rec, fallback=fb):
                record, fallback = rec, fb
            case Audit(type=type_, detail=detail):
                audits.append((type_, detail))
    if record is None and not audits:
        return None
    return RunChange(record, tuple(audits), fallback)


class RunDriver:
    """One run inside its host actor: state, transition numbers, effects."""

    def __init__(self, host: Host, run_id: str, epoch: int,
                 handle: Callable[[Any, Any], tuple[Any, list[Any]]], state: Any,
                 is_final: Callable[[Any], bool]) -> None:
        self.host = host
        self.run_id = run_id
        self.epoch = epoch
        self.state = state
        self._handle = handle
        self._is_final = is_final
        self.seq = 0  # transitions sent
        self.committed = 0  # transitions naosd confirmed
        self.done = False

    # -- events ----------------------------------------------------------------
    def feed(self, event: Any) -> int:
        """Apply ``event`` and perform what it decides; return the last
        transition's number.  A ``NaosError`` from the machine (an operator
        event that does not fit) propagates with nothing changed."""
        self.state, effects = self._handle(self.state, event)
        self._perform(effects)
        self.settle()
        return self.seq

    def safe_feed(self, event: Any) -> None:
        """Feed an event of the run's own (a reply, a timer, carrying on): the
        machine refusing one is a crash, not an answer to anybody."""
        try:
            self.feed(event)
        except NaosError as exc:
            self.host.run_crashed(self, f"{type(event).__name__} refused: {exc}")

    @property
    def final(self) -> bool:
        return bool(self._is_final(self.state))

    # -- effects ---------------------------------------------------------------
    def _perform(self, effects: list[Any]) -> None:
        change = change_of(effects)
        if change is not None:
            self.seq += 1
        carried = change is None
        for effect in effects:
            match effect:
                case RunStep() | RunCompensation():
                    self._ask(effect, None if carried else change)
                    carried = True
                case ArmTimer(kind=kind, step=step, attempt=attempt, delay_s=delay):
                    self.host.wakeupAfter(timedelta(seconds=max(0.0, delay)),
                                          payload=("run", self.run_id, str(kind), step, attempt))
                case Persist() | Audit():
                    pass
        if not carried:
            self.host.ask_port(SaveRun, partial(self._saved, self.seq), run_id=self.run_id,
                               epoch=self.epoch, seq=self.seq, change=change)

    def _ask(self, effect: RunStep | RunCompensation, change: RunChange | None) -> None:
        self.host.ask_port(RunAgentStep, partial(self._answered, effect, self.seq),
                           run_id=self.run_id, epoch=self.epoch, seq=self.seq, change=change,
                           agent=effect.agent, message=effect.message,
                           key=effect.idempotency_key, wait_s=effect.timeout_s + SLACK_S)

    # -- naosd's answers ---------------------------------------------------------
    def _accepted(self, seq: int, reply: PortReply) -> bool:
        """naosd did its part (transition ``seq`` is on disk); else a crash."""
        if self.done:
            return False
        if not reply.ok:
            self.host.run_crashed(self, f"{reply.error_code}: {reply.message}")
            return False
        self.committed = max(self.committed, seq)
        return True

    def _saved(self, seq: int, reply: PortReply) -> None:
        if self._accepted(seq, reply):
            self.settle()

    def _answered(self, effect: RunStep | RunCompensation, seq: int, reply: PortReply) -> None:
        if not self._accepted(seq, reply):
            return
        result = reply.result or {}
        self.safe_feed(reply_event(effect, ok=bool(result.get("ok")), output=result.get("output"),
                              error_code=str(result.get("code") or ""),
                              message=str(result.get("message") or ""), now=time.time()))

    def settle(self) -> None:
        """Final and on disk: tell the host it may let the run go (once)."""
        if not self.done and self.final and self.committed >= self.seq:
            self.done = True
            self.host.run_done(self)
