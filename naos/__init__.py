"""naos for agent code: the agent channel, the handler host and ``ctx``.

Agent code reaches naos through one thing only: its channel, a Unix socket
connection to naosd that was opened for it (see :mod:`naos.host`) and that
naosd knows as that agent.  ``ctx`` (:mod:`naos.context`) is the author's
view of it.  Nothing in this package imports naosd's services: it runs in
the agent's own confined process.
"""

from naos.context import AsyncContext, ChatResult, Context

__all__ = ["AsyncContext", "ChatResult", "Context"]
