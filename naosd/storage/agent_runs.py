"""What one agent message leaves behind, in one transaction: the agent's
state changes (``ctx.state``), its log lines and the ``agent.run`` audit
row.  A reply is acknowledged only after this commits, so state that a
handler changed survives ``kill -9`` of the handler and of naosd, and a
handler that crashed commits nothing but its log lines and the audit row.

``ctx.state`` lives in the ``kv`` table as UTF-8 JSON values (WASM agents'
``kv_get``/``kv_set`` use the same table with raw bytes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from naosd.errors import InvalidRequest
from naosd.storage.store import Store

STATE_VALUE_LIMIT: Final = 1 << 20
STATE_TOTAL_LIMIT: Final = 16 << 20
LOG_TEXT_LIMIT: Final = 8192


@dataclass(frozen=True, slots=True)
class RunRecord:
    agent: str
    audit: dict[str, Any]  # the agent.run row's detail
    state_set: Mapping[str, bytes] = field(default_factory=dict)  # from check_change
    state_delete: Sequence[str] = ()
    logs: Sequence[tuple[str, str, str]] = ()
    audit_type: str = "agent.run"
    caller: str | None = None  # the calling agent, when an agent asked


def load_state(store: Store, agent: str) -> dict[str, Any]:
    """The agent's state: every kv value that is JSON (others are a WASM
    agent's raw bytes and are skipped)."""
    rows = store.query("SELECT key, value FROM kv WHERE agent = ? ORDER BY key", (agent,))
    out: dict[str, Any] = {}
    for key, value in rows:
        try:
            out[str(key)] = json.loads(bytes(value))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    return out


def check_change(change: Any) -> tuple[dict[str, bytes], list[str]]:
    """A handler's ``{"set": {...}, "delete": [...]}``, encoded and bounded.

    Raises InvalidRequest naming the key that broke a rule."""
    if change is None:
        return {}, []
    if not isinstance(change, dict):
        raise InvalidRequest("state: a change must be a map")
    sets, deletes = change.get("set") or {}, change.get("delete") or []
    if not isinstance(sets, dict) or not isinstance(deletes, list):
        raise InvalidRequest("state: set must be a map and delete a list")
    encoded: dict[str, bytes] = {}
    total = 0
    for key, value in sets.items():
        if not isinstance(key, str) or not key or len(key) > 1024:
            raise InvalidRequest(f"state: bad key {key!r}")
        data = json.dumps(value, separators=(",", ":")).encode()
        if len(data) > STATE_VALUE_LIMIT:
            raise InvalidRequest(f"state[{key!r}]: {len(data)} bytes (limit {STATE_VALUE_LIMIT})")
        total += len(data)
        encoded[key] = data
    if total > STATE_TOTAL_LIMIT:
        raise InvalidRequest(f"state: {total} bytes changed at once (limit {STATE_TOTAL_LIMIT})")
    if not all(isinstance(k, str) for k in deletes):
        raise InvalidRequest("state: delete must list string keys")
    return encoded, list(deletes)


def commit(store: Store, records: Iterable[RunRecord]) -> None:
    """Write every record in one transaction (group commit)."""
    with store.transaction() as tx:
        for rec in records:
            for key, data in rec.state_set.items():
                tx.kv_set(rec.agent, key, data)
            for key in rec.state_delete:
                tx.execute("DELETE FROM kv WHERE agent = ? AND key = ?", (rec.agent, key))
            for ts, level, text in rec.logs:
                tx.execute("INSERT INTO agent_logs(agent, ts, level, text) VALUES (?,?,?,?)",
                           (rec.agent, str(ts), str(level), str(text)[:LOG_TEXT_LIMIT]))
            detail = dict(rec.audit)
            if rec.caller is not None:
                detail["caller"] = rec.caller
            tx.audit(rec.audit_type, agent=rec.agent, detail=detail)
