"""The root of every naos error and the errors of the daemon itself (a leaf
module: stdlib only).

Every error carries a stable wire ``code`` (sent in error frames) and an LSB
``exit_code`` (used by naosctl).  The first line of each docstring is the
meaning printed in docs/protocol.md's error table.
"""

from __future__ import annotations

from typing import ClassVar


class NaosError(Exception):
    """A bug: the message says where."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class InvalidRequest(NaosError, ValueError):
    """Bad parameters or values, a bad or duplicate request id, too many requests in flight."""

    code, exit_code = "invalid_request", 2


class ProtocolError(InvalidRequest):
    """A framing or handshake violation; the connection is closed."""

    code = "protocol_error"


class FrameTooLarge(InvalidRequest):
    """A message too large for the actor transport (refused where it is sent)."""

    code: ClassVar[str] = "frame_too_large"


class MethodNotFound(InvalidRequest):
    """No method has this name."""

    code = "method_not_found"


class ConfigError(NaosError, ValueError):
    """A configuration file or value was rejected (e.g. on reload)."""

    code, exit_code = "config_error", 6


class NotFound(NaosError, LookupError):
    """The named thing does not exist."""

    code, exit_code = "not_found", 4


class Conflict(NaosError):
    """The current state does not allow the operation."""

    code = "conflict"


class Unplaceable(Conflict):
    """No node can run the agent: its requirements name a capability or node
    that nobody has (always so on a single host)."""

    code: ClassVar[str] = "unplaceable"


class PermissionDenied(NaosError, PermissionError):
    """Refused at accept (who, or too many; closed), or a method the role may not call."""

    code, exit_code = "permission_denied", 4


class StorageError(NaosError):
    """SQLite failed (translated from the driver's error)."""

    code = "storage_error"


class AuditError(NaosError):
    """The audit chain cannot be written or read."""

    code = "audit_error"


class CheckpointGarbled(AuditError):
    """The audit head checkpoint exists but cannot be trusted: unreadable,
    malformed, or not signed with the audit key (forged, or another key)."""

    code: ClassVar[str] = "audit_checkpoint_garbled"


class Unavailable(NaosError, ConnectionError):
    """A part of naosd cannot serve right now."""

    code, exit_code = "unavailable", 7


class DaemonNotRunning(Unavailable):
    """naosd is not running (raised by the client; never sent by naosd)."""

    code = "not_running"


class ShuttingDown(Unavailable):
    """naosd is stopping; the request was not run, or was cancelled."""

    code = "shutting_down"


class ActorTimeout(Unavailable, TimeoutError):
    """An actor did not answer in time."""

    code, exit_code = "actor_timeout", 1


class ActorGone(Unavailable):
    """The target actor's process is gone: the message was not delivered."""

    code, exit_code = "actor_gone", 1


class RequestTimeout(Unavailable, TimeoutError):
    """The request did not finish within its time limit."""

    code, exit_code = "timeout", 1


class AgentCrashed(NaosError):
    """The agent's handler raised (or its process died) while serving; it is restarted."""

    code = "agent_crashed"


class SandboxCrashed(Unavailable):
    """The sandbox worker died during the run; it is restarted."""

    code, exit_code = "sandbox_crashed", 1


class AlreadyRunning(NaosError):
    """Another naosd holds the lock (naosd's own exit, never sent)."""

    code = "already_running"


class RemoteError(NaosError):
    """An error whose code this side has no class for: keeps the code.

    Not in the table: it is what ``from_wire`` falls back to."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]
