"""Who a request acts for, stamped on the audit rows it causes (stdlib only).

An adapter that calls naosd's methods on someone's behalf (the MCP server acts
for its configured identity) runs the call inside :func:`acting_for`.  The
audit rows written meanwhile, by the call's task and by the tasks it starts
(a saga's coordinator, its step calls), get ``via`` and ``as`` in their
detail through :func:`stamp`.

Rows are stamped where their detail is put together on the event loop
(:meth:`naosd.storage.db.AsyncStore.audit`, the broker's spender, the run
coordinators), never on the store thread: its group commits mix the rows of
many requests, and a context variable there would belong to whichever request
happened to start the writer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_ORIGIN: ContextVar[dict[str, str] | None] = ContextVar("naos_audit_origin", default=None)


@contextlib.contextmanager
def acting_for(via: str, identity: str) -> Iterator[None]:
    """Attribute the audit rows written inside the block to ``identity``,
    reached through ``via`` (e.g. ``"mcp"``)."""
    token = _ORIGIN.set({"via": via, "as": identity})
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def stamp(detail: dict[str, Any]) -> dict[str, Any]:
    """``detail`` with the current origin's ``via`` and ``as`` (unchanged outside
    :func:`acting_for`).  The origin wins over keys of the same name: a row must
    not be able to claim it came from somewhere else."""
    origin = _ORIGIN.get()
    return detail if origin is None else {**detail, **origin}


def current() -> dict[str, str] | None:
    """The origin in force, if any (``{"via": ..., "as": ...}``)."""
    origin = _ORIGIN.get()
    return None if origin is None else dict(origin)
