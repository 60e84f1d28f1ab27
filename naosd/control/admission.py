"""How many connections naosd serves, per uid and in all (pure: stdlib only).

The owner (naosd's own uid) and root are never held to the per-uid cap, and
only they may take the last ``OWNER_SLOTS`` of ``daemon.max_connections``:
whatever other users hold, ``naosctl shutdown`` from the owner gets in.
Connections that never send their hello are closed after
``daemon.handshake_timeout``, so an idle one holds its slot only that long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OWNER_SLOTS = 2  # kept for the owner and root


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    per_uid: int
    owner_uid: int

    def privileged(self, uid: int) -> bool:
        return uid in (self.owner_uid, 0)

    @property
    def kept(self) -> int:
        """Slots only the owner and root may take (none when the limit is 1)."""
        return min(OWNER_SLOTS, self.max_connections - 1)

    def refusal(self, uid: int, held: Mapping[int, int]) -> str | None:
        """None if one more connection from ``uid`` may be served while
        ``held`` (uid -> connections served now), else why not."""
        total = sum(held.values())
        if self.privileged(uid):
            if total >= self.max_connections:
                return f"too many connections (limit {self.max_connections})"
            return None
        if held.get(uid, 0) >= self.per_uid:
            return (f"too many connections from uid {uid} "
                    f"(limit {self.per_uid} per uid: daemon.max_connections_per_uid)")
        if total >= self.max_connections - self.kept:
            return (f"too many connections (limit {self.max_connections}; the last "
                    f"{self.kept} are kept for naosd's owner and root)")
        return None
