"""The one table of naos errors: every class, its wire code and its exit code.

Each area declares its errors once, in a leaf module (stdlib only, so naosctl
imports them all without importing the area itself); this package collects
them into :data:`ERRORS_BY_CODE`, from which :func:`from_wire` rebuilds any
error a peer sent and docs/protocol.md's error table is generated::

    naosd.errors.core     the daemon, protocol, storage, actors (NaosError itself)
    naosd.errors.wasm     the WASM sandbox
    naosd.errors.broker   routing, skills, budgets, the trust gate
    naosd.errors.remote   the LLM server and AXIS
    naosd.errors.agents   the agent channel and the agent API (ctx)

    NaosError (internal, 1)
    ├── InvalidRequest (invalid_request, 2)     bad frame, bad params, unknown method
    │   ├── ProtocolError (protocol_error, 2)   framing / handshake violation
    │   ├── MethodNotFound (method_not_found, 2)
    │   └── FrameTooLarge (frame_too_large, 2)  a message over the actor frame limit
    ├── ConfigError (config_error, 6)           bad configuration file or value
    ├── NotFound (not_found, 4)                 unknown agent, method target, row
    ├── Conflict (conflict, 1)                  state does not allow the operation
    │   └── Unplaceable (unplaceable, 1)        no node can run the agent
    ├── PermissionDenied (permission_denied, 4) peer credentials refused
    ├── StorageError (storage_error, 1)         SQLite failure (translated from apsw)
    ├── AuditError (audit_error, 1)             audit chain cannot be written/read
    │   └── CheckpointGarbled (audit_checkpoint_garbled, 1)  head checkpoint untrustworthy
    ├── Unavailable (unavailable, 7)            daemon not running / shutting down
    │   ├── DaemonNotRunning (not_running, 7)
    │   ├── ShuttingDown (shutting_down, 7)
    │   └── ActorTimeout, ActorGone, RequestTimeout, SandboxCrashed (1)
    ├── AgentCrashed (agent_crashed, 1)         the handler raised; agent restarted
    ├── AlreadyRunning (already_running, 1)     another naosd holds the lock
    └── the wasm_*, broker and remote errors of the other leaf modules

A new error class goes into the leaf module of its area (or a new leaf listed
in ``_LEAVES``), with its own ``code`` and a one-line docstring: a test walks
every package and fails on a class declared anywhere else or on a code used
twice.
"""

from __future__ import annotations

from types import ModuleType

from naosd.errors import agents, broker, core, remote, wasm
from naosd.errors.agents import (
    CallCycle,
    CallTooDeep,
    Cancelled,
    ChannelClosed,
    ConfinementFailed,
    ConfinementUnavailable,
    ToolFailed,
    ToolServerDown,
    UnknownTool,
)
from naosd.errors.broker import BudgetExceeded, NoRoute, SkillFailed, Throttled, TrustDenied
from naosd.errors.core import (
    ActorGone,
    ActorTimeout,
    AgentCrashed,
    AlreadyRunning,
    AuditError,
    CheckpointGarbled,
    ConfigError,
    Conflict,
    DaemonNotRunning,
    FrameTooLarge,
    InvalidRequest,
    MethodNotFound,
    NaosError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    SandboxCrashed,
    ShuttingDown,
    StorageError,
    Unavailable,
    Unplaceable,
)
from naosd.errors.remote import (
    AxisUnavailable,
    AxisUnknownAuid,
    LlmBadResponse,
    LlmCrashed,
    LlmQuotaExceeded,
    LlmRateLimited,
    LlmStarting,
    LlmTimeout,
    LlmUnavailable,
    NoLlm,
)
from naosd.errors.wasm import (
    WasmCacheUnsafe,
    WasmCompileTimeout,
    WasmError,
    WasmExit,
    WasmImportDenied,
    WasmInputTooLarge,
    WasmInvalidModule,
    WasmMemoryLimit,
    WasmModuleTooComplex,
    WasmModuleTooLarge,
    WasmOutOfFuel,
    WasmOutputTooLarge,
    WasmRunError,
    WasmTimeout,
    WasmTrap,
)

_LEAVES: tuple[ModuleType, ...] = (core, wasm, broker, remote, agents)


def _collect(leaves: tuple[ModuleType, ...]) -> dict[str, type[NaosError]]:
    """Every NaosError subclass declared in ``leaves``, by its code.  A code
    declared twice is a programming error: importing naosd.errors fails."""
    table: dict[str, type[NaosError]] = {}
    for leaf in leaves:
        for value in vars(leaf).values():
            if not (isinstance(value, type) and issubclass(value, NaosError)):
                continue
            if value.__module__ != leaf.__name__ or value is RemoteError:
                continue
            first = table.setdefault(value.code, value)
            if first is not value:
                raise TypeError(f"error code {value.code!r} is declared by both "
                                f"{first.__qualname__} and {value.__qualname__}")
    return table


ERRORS_BY_CODE: dict[str, type[NaosError]] = _collect(_LEAVES)


def from_wire(code: str, message: str) -> NaosError:
    """Rebuild the exception a peer described with ``code`` and ``message``;
    an unknown code (a newer peer) becomes a RemoteError that keeps it."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        return RemoteError(message, code)
    return cls(message)


def meaning(cls: type[NaosError]) -> str:
    """The first paragraph of the class's docstring, on one line."""
    return " ".join((cls.__doc__ or "").split("\n\n")[0].split())


__all__ = [
    "ERRORS_BY_CODE",
    "ActorGone",
    "ActorTimeout",
    "AgentCrashed",
    "AlreadyRunning",
    "AuditError",
    "AxisUnavailable",
    "AxisUnknownAuid",
    "BudgetExceeded",
    "CallCycle",
    "CallTooDeep",
    "Cancelled",
    "ChannelClosed",
    "CheckpointGarbled",
    "ConfigError",
    "ConfinementFailed",
    "ConfinementUnavailable",
    "Conflict",
    "DaemonNotRunning",
    "FrameTooLarge",
    "InvalidRequest",
    "LlmBadResponse",
    "LlmCrashed",
    "LlmQuotaExceeded",
    "LlmRateLimited",
    "LlmStarting",
    "LlmTimeout",
    "LlmUnavailable",
    "MethodNotFound",
    "NaosError",
    "NoLlm",
    "NoRoute",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "SandboxCrashed",
    "ShuttingDown",
    "SkillFailed",
    "StorageError",
    "Throttled",
    "ToolFailed",
    "ToolServerDown",
    "TrustDenied",
    "Unavailable",
    "UnknownTool",
    "Unplaceable",
    "WasmCacheUnsafe",
    "WasmCompileTimeout",
    "WasmError",
    "WasmExit",
    "WasmImportDenied",
    "WasmInputTooLarge",
    "WasmInvalidModule",
    "WasmMemoryLimit",
    "WasmModuleTooComplex",
    "WasmModuleTooLarge",
    "WasmOutOfFuel",
    "WasmOutputTooLarge",
    "WasmRunError",
    "WasmTimeout",
    "WasmTrap",
    "from_wire",
    "meaning",
]
