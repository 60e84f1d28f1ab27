"""SQL for the trust gate: the local AXIS registry (agent -> AUID, optional
operator-set scores), the TTL cache of AXIS answers, and trust policies
(scope ``*`` global, else an agent name).  Part of the storage layer: it goes
through :class:`naosd.storage.store.Store`; every change that matters is written
with its audit row in one transaction."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from actors.domain.definitions import validate_name
from naosd.errors import InvalidRequest, NotFound
from naosd.storage.store import Store

GLOBAL: Final = "*"
AUID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
LOCAL_PREFIX: Final = "local:"
"""AUIDs naos made up for agents registered without one: never sent to AXIS."""


@dataclass(frozen=True, slots=True)
class Registration:
    agent: str
    auid: str
    t_score: int | None  # set by the operator: used instead of asking AXIS
    c_score: int | None
    updated_at: str

    @property
    def has_scores(self) -> bool:
        return self.t_score is not None and self.c_score is not None

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "auid": self.auid, "t_score": self.t_score,
                "c_score": self.c_score, "updated_at": self.updated_at,
                "local_only": self.auid.startswith(LOCAL_PREFIX)}


@dataclass(frozen=True, slots=True)
class Cached:
    auid: str
    t_score: int
    c_score: int
    fetched_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"auid": self.auid, "t_score": self.t_score, "c_score": self.c_score,
                "fetched_at": self.fetched_at}


def check_auid(auid: object) -> str:
    if not isinstance(auid, str) or AUID_RE.fullmatch(auid) is None:
        raise InvalidRequest(f"invalid AUID {auid!r}: 1-128 letters, digits and . _ : - "
                             "starting with a letter or digit")
    return auid


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- registry ----------------------------------------------------------------


def register(store: Store, agent: str, auid: str | None, t_score: int | None,
             c_score: int | None) -> Registration:
    """Create or replace ``agent``'s registration (audited)."""
    validate_name(agent)
    auid = check_auid(auid) if auid is not None else f"{LOCAL_PREFIX}{agent}"
    now = store.now_iso()
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO axis_agents(agent, auid, t_score, c_score, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(agent) DO UPDATE SET auid = excluded.auid, "
            "t_score = excluded.t_score, c_score = excluded.c_score, "
            "updated_at = excluded.updated_at",
            (agent, auid, t_score, c_score, now))
        tx.audit("axis.register", agent=agent,
                 detail={"auid": auid, "t_score": t_score, "c_score": c_score})
    return Registration(agent, auid, t_score, c_score, now)


def get_registration(store: Store, agent: str) -> Registration | None:
    rows = store.query("SELECT agent, auid, t_score, c_score, updated_at FROM axis_agents "
                       "WHERE agent = ?", (agent,))
    return Registration(*rows[0]) if rows else None


def registrations_for(store: Store, auid: str) -> list[Registration]:
    rows = store.query("SELECT agent, auid, t_score, c_score, updated_at FROM axis_agents "
                       "WHERE auid = ? ORDER BY agent", (auid,))
    return [Registration(*r) for r in rows]


def list_registrations(store: Store) -> list[Registration]:
    rows = store.query("SELECT agent, auid, t_score, c_score, updated_at FROM axis_agents "
                       "ORDER BY agent")
    return [Registration(*r) for r in rows]


def unregister(store: Store, agent: str) -> Registration:
    """Delete ``agent``'s registration (audited, with what it was); NotFound
    when it has none."""
    with store.transaction() as tx:
        reg = get_registration(store, agent)
        if reg is None:
            raise NotFound(f"agent {agent!r} is not registered (naosctl axis list)")
        tx.execute("DELETE FROM axis_agents WHERE agent = ?", (agent,))
        tx.audit("axis.unregister", agent=agent,
                 detail={"auid": reg.auid, "t_score": reg.t_score, "c_score": reg.c_score})
    return reg


# -- cache -------------------------------------------------------------------


def cache_get(store: Store, auid: str) -> Cached | None:
    rows = store.query("SELECT auid, t_score, c_score, fetched_at FROM axis_cache "
                       "WHERE auid = ?", (auid,))
    return Cached(*rows[0]) if rows else None


def cache_put(store: Store, auid: str, t_score: int, c_score: int) -> Cached:
    now = store.now_iso()
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO axis_cache(auid, t_score, c_score, fetched_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(auid) DO UPDATE SET t_score = excluded.t_score, "
            "c_score = excluded.c_score, fetched_at = excluded.fetched_at",
            (auid, t_score, c_score, now))
    return Cached(auid, t_score, c_score, now)


def cache_list(store: Store) -> list[Cached]:
    rows = store.query("SELECT auid, t_score, c_score, fetched_at FROM axis_cache ORDER BY auid")
    return [Cached(*r) for r in rows]


def cache_clear(store: Store) -> int:
    """Drop every cached AXIS answer (audited); returns how many."""
    with store.transaction() as tx:
        count = tx.execute("SELECT count(*) FROM axis_cache")[0][0]
        tx.execute("DELETE FROM axis_cache")
        tx.audit("axis.cache_clear", detail={"entries": count})
    return int(count)


# -- policies ----------------------------------------------------------------


def get_policy(store: Store, scope: str) -> dict[str, Any] | None:
    rows = store.query("SELECT policy FROM trust_policy WHERE scope = ?", (scope,))
    if not rows:
        return None
    doc: dict[str, Any] = json.loads(rows[0][0])
    return doc


def set_policy(store: Store, scope: str, policy: dict[str, Any] | None) -> None:
    """Store (or with None, delete) the policy of ``scope`` (audited)."""
    if scope != GLOBAL:
        validate_name(scope)
    with store.transaction() as tx:
        if policy is None:
            tx.execute("DELETE FROM trust_policy WHERE scope = ?", (scope,))
        else:
            tx.execute(
                "INSERT INTO trust_policy(scope, policy, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(scope) DO UPDATE SET policy = excluded.policy, "
                "updated_at = excluded.updated_at",
                (scope, json.dumps(policy, sort_keys=True), store.now_iso()))
        tx.audit("trust.policy_set", agent=None if scope == GLOBAL else scope,
                 detail={"scope": scope, "policy": policy})
