"""Children the root supervisor can start, by kind, and the default set."""

from __future__ import annotations

from actors.base import NaosActor


class HeartbeatActor(NaosActor):
    """The trivial default child: answers ``Ping`` with its pid (see NaosActor)."""


CHILD_KINDS: dict[str, type[NaosActor]] = {"heartbeat": HeartbeatActor}

# (logical name, kind) started by the root supervisor when it starts.
DEFAULT_CHILDREN: tuple[tuple[str, str], ...] = (("heartbeat", "heartbeat"),)
