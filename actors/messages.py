"""Messages exchanged with and between naos actors (a leaf module: stdlib only).

Every message is a frozen, slotted dataclass, so it pickles (the multiproc
transport pickles every message) and nobody can mutate a message after sending
it. Requests carry a ``request_id`` that the matching :class:`Reply` echoes, so
the bridge can tell a reply to its own request from a stray one.

Two groups:

* requests from outside (the bridge) or from other actors, answered by a
  ``Reply``: :class:`Ping`, :class:`GetTree`, :class:`StartChild`,
  :class:`StopChild`, :class:`CrashChild`, :class:`KillChild`,
  :class:`WhereIs`;
* the supervision protocol between a supervisor and its children (no
  ``request_id``): :class:`InitChild` -> :class:`ChildPid`, and :class:`Crash`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


def new_request_id() -> str:
    """A fresh, unique request id (32 hex characters)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Request:
    """Base of every message that expects a :class:`Reply`."""

    request_id: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a :class:`Request`; ``ok=False`` carries a wire error.

    ``error_code`` is a ``naosd.errors`` wire code (``from_wire`` rebuilds the
    exception); ``result`` is whatever the request documents.
    """

    request_id: str
    ok: bool
    result: Any = None
    error_code: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class PortRequest(Request):
    """Base of an actor's request to naosd (``naosd.runtime.port``).

    ``reply_to`` is the asking actor's address (the port cannot see who sent
    a frame); naosd answers with a :class:`PortReply`."""

    reply_to: Any


@dataclass(frozen=True, slots=True)
class PortReply(Reply):
    """naosd's answer to a :class:`PortRequest` (a distinct type, so an
    actor tells it from replies of other actors)."""


@dataclass(frozen=True, slots=True)
class PortEcho(PortRequest):
    """Round trip through the port (tests, benchmarks). Result: ``payload``."""

    payload: Any = None


@dataclass(frozen=True, slots=True)
class Ping(Request):
    """Liveness check, answered by every NaosActor.

    Result: ``{"name": str, "pid": int, "ppid": int, "pdeathsig": int}`` of the
    answering actor (``pdeathsig`` is the armed parent-death signal, 0 if none).
    """


@dataclass(frozen=True, slots=True)
class GetTree(Request):
    """Supervision tree. Result: a JSON-able node dict.

    A node is ``{"name", "kind", "state", "pid", "restarts", "children": [...]}``.
    """


@dataclass(frozen=True, slots=True)
class StartChild(Request):
    """Start a supervised child ``name`` of a known ``kind``. Result: None."""

    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class StopChild(Request):
    """Stop child ``name`` for good (no restart). Result: None."""

    name: str


@dataclass(frozen=True, slots=True)
class CrashChild(Request):
    """Test/ops aid: make child ``name`` call ``os._exit(1)``. Result: None."""

    name: str


@dataclass(frozen=True, slots=True)
class KillChild(Request):
    """Test aid: SIGKILL the process of child ``name``. Result: the pid."""

    name: str


@dataclass(frozen=True, slots=True)
class WhereIs(Request):
    """Current address of child ``name`` (it changes on every restart).

    Result: a Thespian ``ActorAddress``.
    """

    name: str


@dataclass(frozen=True, slots=True)
class InitChild:
    """Supervisor -> new child: your logical name is ``name``; report your pid."""

    name: str


@dataclass(frozen=True, slots=True)
class ChildPid:
    """Child -> supervisor, the answer to :class:`InitChild`."""

    name: str
    pid: int


@dataclass(frozen=True, slots=True)
class Crash:
    """Supervisor -> child: exit at once with ``os._exit(1)`` (test aid)."""


# ---------------------------------------------------------------------------
# Agents and user supervisors (issue 3)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitRoot(Request):
    """naosd -> root, once after start: where the database is; the root then
    starts the implicit ``agents`` supervisor and every top-level user
    supervisor whose desired state is running.  Result: None."""

    db_path: str
    checkpoint_path: str
    sandbox_workers: int = 2
    port: Any = None  # naosd's port (naosd.runtime.port), handed on to children


@dataclass(frozen=True, slots=True)
class InitSupervisor:
    """Parent -> new supervisor: your name, where to read your definition
    and children, and the root (which keeps the name registry)."""

    name: str
    db_path: str
    checkpoint_path: str
    root: Any


@dataclass(frozen=True, slots=True)
class InitAgent:
    """Supervisor -> new agent: your definition.  The agent answers
    :class:`ChildSpawned` at once, loads its handler and answers
    :class:`ChildPid`, or :class:`ChildCrashed` and exits.  With ``probe`` it
    only loads the handler, answers :class:`ProbeResult` and exits."""

    definition: Any  # actors.domain.definitions.AgentDef
    db_path: str
    probe: bool = False
    remote: bool = False  # placed on another node: its handler runs in the actor


@dataclass(frozen=True, slots=True)
class HandlerGone:
    """naosd -> an agent actor: its handler's channel closed (it exited, or
    was killed); look at the process now."""

    pid: int


@dataclass(frozen=True, slots=True)
class ChildSpawned:
    """New agent -> its supervisor, before it loads its handler: its pid (so a
    start that hangs can still be killed)."""

    name: str
    pid: int


@dataclass(frozen=True, slots=True)
class ProbeAgent(Request):
    """naosd -> the implicit supervisor: load ``definition``'s handler in a
    throwaway agent process (never in naosd's) before the agent is created.
    Result: None; an ``invalid_request`` error carries the load error (file,
    line, message); a ``timeout`` error if loading took over ``timeout_s``."""

    definition: Any  # actors.domain.definitions.AgentDef
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Probing agent -> supervisor: ``error`` is empty if the handler loaded."""

    name: str
    error: str


@dataclass(frozen=True, slots=True)
class ChildCrashed:
    """Child -> its supervisor, just before an abnormal exit: why."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChildDone:
    """Child -> its supervisor, just before a normal exit it chose itself
    (an agent whose handler called ``ctx.stop()``)."""

    name: str


@dataclass(frozen=True, slots=True)
class ExitNoted:
    """Supervisor -> child, the answer to :class:`ChildCrashed` or
    :class:`ChildDone`: the reason is recorded, the child may exit now.

    An agent placed on another node is a Thespian child of that node's admin,
    which tells the supervisor of its exit over another connection than the
    agent's own notice: without this answer the exit can overtake the reason.
    """

    name: str


@dataclass(frozen=True, slots=True)
class RunAgent(Request):
    """Run the agent's handler on ``input``.  Result: ``{"output", "logs",
    "ms", "pid"}``.  A handler that raises answers an ``agent_crashed`` error
    and the agent then exits (its supervisor restarts it)."""

    input: Any
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class Sync(Request):
    """naosd -> a supervisor: re-read your children from the database and
    start, stop, add or remove what differs.  ``stop``: children to stop even
    if they run on demand; ``start``: children an operator started (a failed
    or backing-off one starts now).  Result: the supervisor's node."""

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Activate(Request):
    """naosd -> the implicit supervisor: run agent ``name`` on demand (its
    desired state stays as it is).  Result: None; naosd then waits for the
    registry."""

    name: str


@dataclass(frozen=True, slots=True)
class Deactivate(Request):
    """naosd -> the implicit supervisor: agent ``name`` has been idle; stop
    it if it runs on demand (not because its desired state is running).
    Result: None."""

    name: str


@dataclass(frozen=True, slots=True)
class Resolve(Request):
    """naosd -> root: the current address of agent or supervisor ``name``.
    Result: ``{"address", "pid", "kind", "supervisor"}``; NotFound if it is
    not running (after waiting up to ``wait_s`` seconds for it to register).
    With ``stale_pid``, a registration of that (dead) process does not count."""

    name: str
    wait_s: float = 0.0
    stale_pid: int = 0


@dataclass(frozen=True, slots=True)
class Registered:
    """A supervisor -> root: ``name`` (an agent or supervisor) now lives at
    ``address``; ``address=None`` means it stopped."""

    name: str
    kind: str
    address: Any
    pid: int | None
    supervisor: str


@dataclass(frozen=True, slots=True)
class TreeUpdate:
    """A supervisor -> root: its current tree node (children by name)."""

    name: str
    node: Any


# ---------------------------------------------------------------------------
# WASM sandboxes (issue 4)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitSandbox:
    """Root -> the sandbox pool, and pool -> each worker."""

    name: str
    db_path: str
    cache_dir: str
    workers: int


@dataclass(frozen=True, slots=True)
class RunWasm(Request):
    """Run a WASI command module.  Result: exit_code, stdout, stderr,
    fuel_used, cost_micro_usd, memory_peak_bytes, wall_ms, cached, logs."""

    module: bytes
    stdin: bytes
    limits: dict[str, int]
    grants: tuple[str, ...] = ()
    agent: str = ""


@dataclass(frozen=True, slots=True)
class ValidateWasm(Request):
    """Inspect a module: imports, exports, size, verdict."""

    module: bytes
    limits: dict[str, int]
    grants: tuple[str, ...] = ()
