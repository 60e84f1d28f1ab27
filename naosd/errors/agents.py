"""Errors of the agent channel and the agent API (a leaf module: stdlib only,
collected by ``naosd.errors``)."""

from __future__ import annotations

from typing import ClassVar

from naosd.errors.core import InvalidRequest, NaosError, Unavailable


class ChannelClosed(Unavailable):
    """The other end of an agent channel went away."""

    code: ClassVar[str] = "channel_closed"


class Cancelled(NaosError):
    """The caller gave up on the request (its deadline passed, or it was
    cancelled); nothing more runs or is charged for it."""

    code: ClassVar[str] = "cancelled"


class CallCycle(InvalidRequest):
    """An agent asked an agent already waiting in its own call chain (A asks
    B asks A): refused at once, naming the chain."""

    code: ClassVar[str] = "call_cycle"


class CallTooDeep(InvalidRequest):
    """A chain of nested agent calls longer than the limit."""

    code: ClassVar[str] = "call_too_deep"


class UnknownTool(InvalidRequest):
    """A tool that neither naos nor a registered tool server offers."""

    code: ClassVar[str] = "unknown_tool"


class ToolFailed(NaosError):
    """The tool server answered the call with an error (an ``isError`` result or
    a refusal); unlike ``tool_server_down``, the server is up."""

    code: ClassVar[str] = "tool_failed"


class ToolServerDown(NaosError, ConnectionError):
    """The tool server is not connected (starting, restarting after a crash,
    unreachable, or failed until ``naosctl mcp restart``), or died during the
    call."""

    code: ClassVar[str] = "tool_server_down"


class StateTooLarge(InvalidRequest):
    """An agent's durable state (a value or the whole) is over its limit."""

    code: ClassVar[str] = "state_too_large"


class ConfinementError(NaosError):
    """Agent code could not be confined."""

    code: ClassVar[str] = "confinement_error"


class ConfinementUnavailable(ConfinementError):
    """Raised before a child starts: this kernel or platform has no such
    mechanism (unlike ConfinementFailed, nothing was tried)."""

    code: ClassVar[str] = "confinement_unavailable"


class ConfinementFailed(ConfinementError):
    """Raised inside the child when a mechanism the kernel has refused the
    policy (unlike ConfinementUnavailable, the probe said it was there)."""

    code: ClassVar[str] = "confinement_failed"
