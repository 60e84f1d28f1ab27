"""The whole naos exception hierarchy (a leaf module: stdlib only).

Every error carries a stable wire ``code`` (sent in error frames) and an LSB
``exit_code`` (used by naosctl)::

    NaosError (internal, 1)
    ├── InvalidRequest (invalid_request, 2)     bad frame, bad params, unknown method
    │   └── ProtocolError (protocol_error, 2)   framing / handshake violation
    ├── ConfigError (config_error, 6)           bad configuration file or value
    ├── NotFound (not_found, 4)                 unknown agent, method target, row
    ├── Conflict (conflict, 1)                  state does not allow the operation
    │   └── Unplaceable (unplaceable, 1)        no node can run the agent
    ├── PermissionDenied (permission_denied, 4) peer credentials refused
    ├── StorageError (storage_error, 1)         SQLite failure (translated from apsw)
    ├── AuditError (audit_error, 1)             audit chain cannot be written/read
    ├── Unavailable (unavailable, 7)            daemon not running / shutting down
    │   ├── DaemonNotRunning (not_running, 7)
    │   ├── ShuttingDown (shutting_down, 7)
    │   └── ActorTimeout (actor_timeout, 1)
    ├── AgentCrashed (agent_crashed, 1)         the handler raised; agent restarted
    └── AlreadyRunning (already_running, 1)     another naosd holds the lock
"""

from __future__ import annotations

from typing import ClassVar


class NaosError(Exception):
    """Base of every error naos raises on purpose."""

    code: ClassVar[str] = "internal"
    exit_code: ClassVar[int] = 1

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class InvalidRequest(NaosError, ValueError):
    code, exit_code = "invalid_request", 2


class ProtocolError(InvalidRequest):
    code = "protocol_error"


class MethodNotFound(InvalidRequest):
    code = "method_not_found"


class ConfigError(NaosError, ValueError):
    code, exit_code = "config_error", 6


class NotFound(NaosError, LookupError):
    code, exit_code = "not_found", 4


class Conflict(NaosError):
    code = "conflict"


class PermissionDenied(NaosError, PermissionError):
    code, exit_code = "permission_denied", 4


class StorageError(NaosError):
    code = "storage_error"


class AuditError(NaosError):
    code = "audit_error"


class Unavailable(NaosError, ConnectionError):
    code, exit_code = "unavailable", 7


class DaemonNotRunning(Unavailable):
    code = "not_running"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class ActorTimeout(Unavailable, TimeoutError):
    code, exit_code = "actor_timeout", 1


class ActorGone(Unavailable):
    """The target actor's process is gone: the message was not delivered."""

    code, exit_code = "actor_gone", 1


class RequestTimeout(Unavailable, TimeoutError):
    code, exit_code = "timeout", 1


class AgentCrashed(NaosError):
    """The agent's handler raised (or its process died) while serving."""

    code = "agent_crashed"


class SandboxCrashed(Unavailable):
    """The sandbox worker running a module died mid-run (it is restarted)."""

    code, exit_code = "sandbox_crashed", 1


class Unplaceable(Conflict):
    """No node can run the agent: its requirements name a capability or node
    that nobody has (always so on a single host)."""

    code = "unplaceable"


class RemoteError(NaosError):
    """An error whose code this side has no class for: keeps the code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]


class AlreadyRunning(NaosError):
    code = "already_running"


def _all_subclasses(cls: type[NaosError]) -> list[type[NaosError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_CODE: dict[str, type[NaosError]] = {
    c.code: c for c in _all_subclasses(NaosError)
}


def from_wire(code: str, message: str) -> NaosError:
    """Rebuild the exception a peer described with ``code`` and ``message``.

    Subclasses defined elsewhere (e.g. the ``wasm_*`` errors) are found too,
    once their module is imported."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        ERRORS_BY_CODE.update({c.code: c for c in _all_subclasses(NaosError)})
        cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code)
    return cls(message)
