"""The values of the supervision state machine: specs, state, events, effects.

A leaf of :mod:`actors.domain.supervision` (which re-exports every name here
and holds ``handle``): stdlib, ``actors.domain.definitions`` and
``naosd.errors`` only. Every value is frozen and slotted, so a state can be
compared, hashed and kept as evidence in a test.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

from actors.domain.definitions import validate_name
from naosd.errors import InvalidRequest, NotFound

# "service": one of the daemon's own actors under the root (sandbox pool, heartbeat...)
CHILD_KINDS: Final = ("agent", "supervisor", "service")
TIMER_SLACK_S: Final = 1e-3  # a timer may fire this early (float rounding) and still count
# The reason of an abnormal exit whose child did not say why (yet).
PROCESS_DIED: Final = "process died"


class Strategy(enum.StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class RestartType(enum.StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted; its spec stays, it ends "stopped"


class Intensity(enum.StrEnum):
    """Who pays for too many restarts."""

    # OTP: more than max_restarts restarts of any children in window_s: the
    # supervisor stops them all, fails and escalates to its parent.
    SUPERVISOR = "supervisor"
    # supervisord's startretries: each child on its own. A child that crashes
    # more than max_restarts times in a row, each time after a run shorter than
    # window_s, is FAILED (no more restarts, an alert) and its siblings never
    # notice. The supervisor itself never gives up. one_for_one only.
    CHILD = "child"


class ChildRun(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"  # Start sent, not reported started yet
    RUNNING = "running"
    STOPPING = "stopping"  # Stop (maybe Kill) sent, exit not reported yet
    RESTARTING = "restarting"  # down; waiting for its backoff or for siblings to stop
    FAILED = "failed"  # down for good: the supervisor gave up, or (CHILD intensity)
    #                    it crashed too often; only an operator's start revives it
    PAUSED = "paused"  # down, and not restarted until resumed


class SupStatus(enum.StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"  # Shutdown: stopping children, then STOPPED
    STOPPED = "stopped"
    FAILED = "failed"  # gave up; children are stopped, then GiveUp is emitted


UP: Final = frozenset({ChildRun.STARTING, ChildRun.RUNNING, ChildRun.STOPPING})
DOWN: Final = frozenset({ChildRun.STOPPED, ChildRun.PAUSED, ChildRun.FAILED})
_E = TypeVar("_E", bound=enum.StrEnum)


def _coerce(kind: type[_E], value: object, what: str) -> _E:
    try:
        return kind(str(value).replace("-", "_"))
    except ValueError:
        options = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"invalid {what} {value!r}: use one of {options}") from None


def _check_seconds(value: object, what: str, *, zero_ok: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        ok = False
    else:
        ok = math.isfinite(value) and (value > 0 or (zero_ok and value == 0))
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise InvalidRequest(f"{what} must be a finite number of seconds {bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One child as declared: ``kind`` is "agent", "supervisor" or "service".

    ``critical``: under CHILD intensity, restarted at once after every exit,
    never backed off and never FAILED (the daemon's own actors).
    """

    name: str
    kind: str
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout_s: float = 5.0
    critical: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name, "child")
        if self.kind not in CHILD_KINDS:
            kinds = ", ".join(CHILD_KINDS)
            raise InvalidRequest(f"invalid child kind {self.kind!r}: use one of {kinds}")
        object.__setattr__(self, "restart", _coerce(RestartType, self.restart, "restart type"))
        _check_seconds(self.shutdown_timeout_s, "shutdown_timeout_s")


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor as declared; children are listed in start order.

    ``audit_verbs``: the verbs this supervisor writes audit rows for (None: all).
    """

    name: str
    strategy: Strategy
    max_restarts: int = 3
    window_s: float = 5.0
    backoff_initial_s: float = 0.0
    backoff_max_s: float = 0.0
    children: tuple[ChildSpec, ...] = ()
    intensity: Intensity = Intensity.SUPERVISOR
    audit_verbs: frozenset[str] | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "supervisor")
        object.__setattr__(self, "strategy", _coerce(Strategy, self.strategy, "strategy"))
        object.__setattr__(self, "intensity", _coerce(Intensity, self.intensity, "intensity"))
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool):
            raise InvalidRequest(f"max_restarts must be an integer, got {self.max_restarts!r}")
        if self.max_restarts < 0:
            raise InvalidRequest(f"max_restarts must be >= 0, got {self.max_restarts}")
        _check_seconds(self.window_s, "window_s", zero_ok=False)
        _check_seconds(self.backoff_initial_s, "backoff_initial_s")
        _check_seconds(self.backoff_max_s, "backoff_max_s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise InvalidRequest("backoff_max_s must be >= backoff_initial_s")
        if self.intensity is Intensity.CHILD and self.strategy is not Strategy.ONE_FOR_ONE:
            raise InvalidRequest("per-child intensity needs the one_for_one strategy")
        object.__setattr__(self, "children", tuple(self.children))
        _check_children(self.children)

    def child(self, name: str) -> ChildSpec:
        """The spec of child ``name`` (raises NotFound)."""
        for spec in self.children:
            if spec.name == name:
                return spec
        raise NotFound(f"supervisor {self.name!r} has no child {name!r}")


def _check_children(children: tuple[object, ...]) -> None:
    seen: set[str] = set()
    for spec in children:
        if not isinstance(spec, ChildSpec):
            raise InvalidRequest(f"children must be ChildSpec values, got {spec!r}")
        if spec.name in seen:
            raise InvalidRequest(f"duplicate child name {spec.name!r}")
        seen.add(spec.name)


@dataclass(frozen=True, slots=True)
class ChildState:
    """What the supervisor knows about one child right now."""

    name: str
    run: ChildRun = ChildRun.STOPPED
    restarts: int = 0
    pid: int | None = None
    last_error: str = ""
    started_at: float | None = None
    paused: bool = False  # budget pause: never restarted while set
    crashes: int = 0  # consecutive exits that led to a restart: the backoff exponent
    deadline: float | None = None  # when its armed timer is due (backoff or stop timeout)
    # Every Start makes a new incarnation; the shell tags each report with the
    # incarnation of the process it came from, so a late report of a dead
    # process never counts for its replacement.
    incarnation: int = 0
    notice: tuple[bool, str] | None = None  # (normal, reason) announced before its exit
    unexplained: int = 0  # incarnation that exited without a reason (one may follow)
    on_demand: bool = False  # activated by a call, not by its desired state
    retiring: bool = False  # removed once it is down
    respawn: bool = False  # retired while stopping, then wanted again: start once down
    recovering: bool = False  # its next start is a restart (already audited)


@dataclass(frozen=True, slots=True)
class Pending:
    """The multi-step operation in progress (empty when there is none)."""

    stops: tuple[str, ...] = ()  # stopped one at a time, head first (reverse start order)
    starts: tuple[str, ...] = ()  # started one at a time once ``stops`` is empty
    give_up: str = ""  # reason for the GiveUp effect, emitted once every child is down


@dataclass(frozen=True, slots=True)
class SupState:
    """A supervisor's whole state; ``children`` is in start order."""

    spec: SupervisorSpec
    status: SupStatus = SupStatus.STOPPED
    children: tuple[ChildState, ...] = ()
    restart_log: tuple[float, ...] = ()  # restart times inside the intensity window
    pending: Pending = Pending()
    restarts: int = 0  # restart decisions taken since initial()

    def child(self, name: str) -> ChildState:
        """The state of child ``name`` (raises NotFound)."""
        for child in self.children:
            if child.name == name:
                return child
        raise NotFound(f"supervisor {self.spec.name!r} has no child {name!r}")

    def find(self, name: str) -> ChildState | None:
        """The state of child ``name``, or None."""
        return next((c for c in self.children if c.name == name), None)


# -- events ---------------------------------------------------------------------------
# ``incarnation=None`` on a report means "the current process" (tests, and
# shells that cannot tell); a number that is not current makes it stale.


@dataclass(frozen=True, slots=True)
class Boot:
    now: float


@dataclass(frozen=True, slots=True)
class ChildSpawned:
    """The child's process exists (its pid is known) and is loading."""

    name: str
    pid: int
    now: float
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class ChildStarted:
    """The child is serving: an agent's handler loaded, a supervisor booted."""

    name: str
    pid: int
    now: float
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class ChildExited:
    """The child's process is gone, and the shell knows why."""

    name: str
    abnormal: bool
    reason: str
    now: float
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class ExitNotice:
    """The child says why it is about to exit: ``normal`` (it chose to stop)
    or not (a crash, with its reason). May also arrive after the exit."""

    name: str
    normal: bool
    reason: str
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessGone:
    """The child's process is gone; the machine decides why (a stop we asked
    for, the notice the child sent, or else it died)."""

    name: str
    now: float
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class ChildLost:
    """The child's process is out of reach (its node is gone): an abnormal
    exit with ``reason``; the shell forgets the process."""

    name: str
    reason: str
    now: float
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class StartTimedOut:
    """The start deadline the shell armed passed (a remote creation Thespian
    may have dropped): if the child still has not started, it failed."""

    name: str
    reason: str
    now: float
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class Unplaceable:
    """No node can run the child the shell was starting: park it, paused."""

    name: str
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class StopChild:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class StartChild:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class AddChild:
    spec: ChildSpec
    now: float


@dataclass(frozen=True, slots=True)
class RemoveChild:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The children the definitions want running (``wanted``). Children of
    ``kinds`` that are not wanted are retired (stopped, then removed), except
    those running on demand unless named in ``stop``; wanted ones that are
    missing are added. ``start`` names children an operator started: a FAILED
    or backing-off one starts now."""

    wanted: tuple[ChildSpec, ...]
    now: float
    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    kinds: tuple[str, ...] = CHILD_KINDS


@dataclass(frozen=True, slots=True)
class Activate:
    """Run ``spec`` on demand (added and started if needed; its desired state
    is not running). Refused for a FAILED child."""

    spec: ChildSpec
    now: float


@dataclass(frozen=True, slots=True)
class Deactivate:
    """An on-demand child is no longer needed: retire it (others are kept)."""

    name: str
    now: float
    reason: str = "idle"


@dataclass(frozen=True, slots=True)
class Pause:
    name: str


@dataclass(frozen=True, slots=True)
class Resume:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class BackoffElapsed:
    name: str
    now: float


@dataclass(frozen=True, slots=True)
class Shutdown:
    now: float


@dataclass(frozen=True, slots=True)
class StopTimeout:
    name: str
    now: float


Event: TypeAlias = (
    Boot
    | ChildSpawned
    | ChildStarted
    | ChildExited
    | ExitNotice
    | ProcessGone
    | ChildLost
    | StartTimedOut
    | Unplaceable
    | StopChild
    | StartChild
    | AddChild
    | RemoveChild
    | Reconcile
    | Activate
    | Deactivate
    | Pause
    | Resume
    | BackoffElapsed
    | Shutdown
    | StopTimeout
)


# -- effects --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Create the child's process (its incarnation is in the state)."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Ask the child to exit and arm a ``StopTimeout`` in ``timeout_s``."""

    name: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Kill:
    name: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """Arm a ``BackoffElapsed`` timer."""

    name: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class Forget:
    """Stop tracking the child's process (ask it to exit if it is there):
    its exit has been decided without it."""

    name: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Escalate to the parent as an abnormal exit, then exit."""

    reason: str


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must act on: log it as a warning."""

    message: str


@dataclass(frozen=True, slots=True)
class Audit:
    type: str
    detail: dict[str, Any]


Effect: TypeAlias = Start | Stop | Kill | Schedule | Forget | GiveUp | Alert | Audit
