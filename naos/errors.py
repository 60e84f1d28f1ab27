"""Errors of the agent channel and the agent API (a leaf: stdlib and
``naosd.errors`` only; ``naosd.errors`` collects them into its one table)."""

from __future__ import annotations

from naosd.errors import InvalidRequest, NaosError, Unavailable


class ChannelClosed(Unavailable):
    """The other end of an agent channel went away."""

    code = "channel_closed"


class Cancelled(NaosError):
    """The caller gave up on the request (its deadline passed, or it was
    cancelled); nothing more runs or is charged for it."""

    code = "cancelled"


class CallCycle(InvalidRequest):
    """An agent asked an agent already waiting in its own call chain
    (A asks B asks A): refused at once, naming the chain."""

    code = "call_cycle"


class CallTooDeep(InvalidRequest):
    """A chain of nested agent calls longer than the limit."""

    code = "call_too_deep"


class UnknownTool(InvalidRequest):
    """A tool that neither naos nor a registered tool server offers."""

    code = "unknown_tool"


class StateTooLarge(InvalidRequest):
    """An agent's durable state (a value or the whole) is over its limit."""

    code = "state_too_large"
