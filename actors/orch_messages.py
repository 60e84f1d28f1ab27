"""Messages of the orchestration actors (a leaf module: stdlib and actors.messages).

Three groups, every one a frozen dataclass (they pickle, nobody mutates them):

* **port requests** (:class:`~actors.messages.PortRequest`): what a
  coordinator, a pool actor or the orchestration supervisor asks naosd; naosd
  serves them in ``naosd/orchestration/port_handlers.py``.  A run's
  transitions are numbered: ``epoch`` names one incarnation of the run's
  shell (a new one each time a shell loads the run), ``seq`` its transitions
  (1, 2, ...); naosd commits them in that order and refuses a stale epoch;
* **requests from naosd** (answered with a ``Reply``): start a run, feed it
  an operator's command, find a pool's actor, hand a pool a task;
* **the tree's own protocol** (no ``request_id``): init messages and
  :class:`RunFinished`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.messages import PortRequest, Request

# -- what a transition writes ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunChange:
    """One transition's writes: the run's new record (None: unchanged), its
    audit rows (also the run's timeline), and what to store instead of the
    record if that cannot be stored."""

    record: dict[str, Any] | None = field(default=None, hash=False)
    audits: tuple[tuple[str, dict[str, Any]], ...] = field(default=(), hash=False)
    fallback: dict[str, Any] | None = field(default=None, hash=False)


# -- port requests (actor -> naosd) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadRun(PortRequest):
    """A restarted shell loads its run.  Result: ``{"kind", "record", "epoch"}``;
    requests of earlier epochs are refused from now on."""

    run_id: str


@dataclass(frozen=True, slots=True)
class SaveRun(PortRequest):
    """Commit transition ``seq`` of ``epoch`` (after every earlier one).  Result: None."""

    run_id: str
    epoch: int
    seq: int
    change: RunChange


@dataclass(frozen=True, slots=True)
class RunAgentStep(PortRequest):
    """Commit ``change`` as transition ``seq`` (or, without a change, wait
    until ``seq`` is committed), THEN ask ``agent`` through naosd's Agents
    service (the path of ``agent.run``: activation, audit).  Result:
    ``{"ok": True, "output"}`` or ``{"ok": False, "code", "message"}`` for
    what the agent did; an error reply means naosd could not do its part
    (the shell then restarts from its durable record)."""

    run_id: str
    epoch: int
    seq: int
    change: RunChange | None
    agent: str
    message: Any = field(hash=False)
    key: str
    wait_s: float


@dataclass(frozen=True, slots=True)
class RecoverRuns(PortRequest):
    """The orchestration supervisor, when it starts: which runs need a
    coordinator and which pools an actor.  naosd answers once the agents
    supervisor is up.  Result: ``{"runs": [[run_id, kind], ...], "pools": [name, ...]}``."""


@dataclass(frozen=True, slots=True)
class LoadPool(PortRequest):
    """A pool actor, when it starts.  Result: ``{"spec", "tasks": [[task_id,
    input], ...]}`` (queued and in-doubt tasks, in submission order)."""

    pool: str


@dataclass(frozen=True, slots=True)
class RunPoolTask(PortRequest):
    """Run queue task ``task_id`` on ``member``: naosd marks it running,
    asks the agent, stores the final status.  Result: None (settled,
    whatever the agent answered); an error reply means naosd could not run
    it, and the task goes back to the queue."""

    pool: str
    task_id: str
    member: str
    input: Any = field(hash=False)
    wait_s: float


@dataclass(frozen=True, slots=True)
class CoordinatorGaveUp(PortRequest):
    """The supervisor stopped restarting a run's shell (too many crashes).
    Result: None (naosd audits it; the run stays as persisted)."""

    run_id: str
    kind: str
    reason: str


# -- requests from naosd ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRun(Request):
    """Start the coordinator of a new run (``record`` as inserted, lane
    ``epoch``).  Result: None; a run that already has one is left alone."""

    run_id: str
    kind: str
    record: dict[str, Any] = field(hash=False)
    epoch: int


@dataclass(frozen=True, slots=True)
class RunCommand(Request):
    """An operator's event for a run (``Recover``, a workflow's ``Resume``,
    a saga's ``RetryCompensation`` / ``Resolve``): fed to its coordinator,
    started for it if needed.  Result: ``{"epoch", "seq", "status"}`` (naosd
    waits until ``seq`` is committed).  ``reply_to`` is filled in by the
    supervisor when it hands the command on."""

    run_id: str
    kind: str
    event: Any
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class PoolAddress(Request):
    """The actor of pool ``pool`` (started if it is not running).  Result: its address."""

    pool: str


@dataclass(frozen=True, slots=True)
class Enqueue(Request):
    """Pool actor: tasks were submitted (their rows are queued), in order:
    ``((task_id, input), ...)``.  Result: None."""

    tasks: tuple[tuple[str, Any], ...] = field(hash=False)


@dataclass(frozen=True, slots=True)
class PoolChanged(Request):
    """Pool actor: its definition changed (members, dispatch).  Result: None."""

    spec: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class CancelTask(Request):
    """Pool actor: take ``task_id`` out of the queue.  Result: None; Conflict
    if it was already sent to a member."""

    task_id: str


@dataclass(frozen=True, slots=True)
class StartFanOut(Request):
    """Pool actor: run a fan-out (``spec`` an ``actors.domain.pool.FanOutSpec``,
    ``record`` as inserted, lane ``epoch``).  Result: None at once; the
    outcome is the run's final record."""

    run_id: str
    epoch: int
    record: dict[str, Any] = field(hash=False)
    spec: Any


# -- the tree's own protocol -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitOrchestration:
    """Root -> the orchestration supervisor."""

    name: str
    port: Any
    root: Any


@dataclass(frozen=True, slots=True)
class InitCoordinator:
    """Supervisor -> a coordinator: your run.  Without ``record`` it loads
    the run through the port (a restart); ``command`` is fed first."""

    run_id: str
    kind: str
    port: Any
    record: dict[str, Any] | None = field(default=None, hash=False)
    epoch: int = 0
    command: RunCommand | None = None


@dataclass(frozen=True, slots=True)
class InitPool:
    """Supervisor -> a pool actor: your pool."""

    pool: str
    port: Any


@dataclass(frozen=True, slots=True)
class RunFinished:
    """Coordinator -> supervisor: my run is final and on disk; stop me."""

    run_id: str
