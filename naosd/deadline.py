"""The deadline of the request being served (a leaf module: stdlib only).

asyncio's timeout scopes cannot be read from inside; trio's
``current_effective_deadline()`` can, and this is that idea for naosd: the
control server sets the deadline of each request (``daemon.request_timeout``,
or the client's own for methods that take one), and code far below reads it
to give up with its own clear error just before the request is cut (the LLM
service waiting for its local server, see :mod:`naosd.broker.llm.service`).
A context variable follows the request's task and the tasks it creates.
Times are ``time.monotonic()`` values, the clock of asyncio's event loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_CURRENT: ContextVar[float | None] = ContextVar("naos_request_deadline", default=None)


def current() -> float | None:
    """When the request being served must be answered, or None outside a request."""
    return _CURRENT.get()


@contextlib.contextmanager
def scope(seconds: float) -> Iterator[float]:
    """Serve a request that must be answered within ``seconds`` from now."""
    deadline = time.monotonic() + seconds
    token = _CURRENT.set(deadline)
    try:
        yield deadline
    finally:
        _CURRENT.reset(token)
