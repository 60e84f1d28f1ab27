"""Dealing with the audit head checkpoint in the open.

A writer never recreates a missing checkpoint nor replaces a garbled one
(``naosd.storage.checkpoint``). These are the three places that do, each
leaving an audit row behind:

* :func:`startup_check`, run by naosd once at start before anything else
  writes: a missing (with rows in the log) or garbled file becomes an alert
  row, ``audit.checkpoint_missing`` or ``audit.checkpoint_garbled``, a garbled
  file is kept as ``audit.head.bad-<time>``, and a fresh checkpoint is written
  at the alert row. ``audit verify`` fails, naming the alert, until
* :func:`reanchor` (``naosctl audit reanchor --yes``), the operator's
  acknowledgement after investigating: an ``audit.reanchor`` row recording the
  old checkpoint and the log's head, and a checkpoint at that row;
* the first start with an audit key: a checkpoint written by an older naos
  (unsigned) is signed in place and ``audit.key_created`` is recorded.

:func:`export_head` signs the log's head for anchoring outside the machine.
"""

from __future__ import annotations

import logging
from typing import Any

from naosd.errors import AuditError, CheckpointGarbled
from naosd.storage.audit import (
    ALERT_TYPES,
    GENESIS,
    REANCHOR_TYPE,
    AuditRow,
    Checkpoint,
    SignedHead,
    key_id,
    sign_head,
)
from naosd.storage.checkpoint import (
    read_unsigned,
    replace_checkpoint,
    set_aside,
)
from naosd.storage.store import Store

log = logging.getLogger("naosd.storage.store")

KEY_CREATED_TYPE = "audit.key_created"
MISSING, GARBLED = ALERT_TYPES


def checkpoint_state(store: Store) -> dict[str, Any]:
    """What the checkpoint file holds: ``state`` is "ok", "missing" (no file
    while the log has rows), "new" (no file, empty log), "garbled" or "none"
    (no checkpoint configured); with ``seq``, ``hash``, ``problem``."""
    path = store.checkpoint_path
    out: dict[str, Any] = {"path": str(path) if path else None, "signed": store.audit_key
                           is not None, "seq": None, "hash": None, "problem": None}
    if path is None:
        return {**out, "state": "none"}
    try:
        head = store.read_checkpoint()
    except CheckpointGarbled as exc:
        return {**out, "state": "garbled", "problem": str(exc)}
    if head is None:
        state = "missing" if store.audit_head() is not None else "new"
        return {**out, "state": state, "problem": f"{path} is missing" if state == "missing"
                else None}
    return {**out, "state": "ok", "seq": head.seq, "hash": head.hash}


def _head_detail(head: Checkpoint | None) -> dict[str, Any]:
    return {"seq": head.seq, "hash": head.hash} if head else {"seq": 0, "hash": GENESIS}


def startup_check(store: Store, *, key_created: bool = False) -> AuditRow | None:
    """Run once by naosd at start; the row it wrote (an alert, or the note of
    a new key), or None when the checkpoint was fine."""
    state = checkpoint_state(store)
    if state["state"] == "none":
        return None
    if state["state"] in ("ok", "new"):  # ok with a new key: a new chain
        return store.append_audit(KEY_CREATED_TYPE, detail=_key_detail(store)) \
            if key_created else None
    if state["state"] == "garbled" and key_created:
        upgraded = _sign_unsigned(store)
        if upgraded is not None:
            return store.append_audit(KEY_CREATED_TYPE, detail={
                **_key_detail(store), "checkpoint_signed": upgraded.seq})
    return _alert(store, state)


def _key_detail(store: Store) -> dict[str, Any]:
    key = store.audit_key
    return {"key_id": key_id(key) if key else None}


def _sign_unsigned(store: Store) -> Checkpoint | None:
    """Sign a checkpoint an older naos wrote without a key (first start with
    one). None when the file is anything else."""
    path, key = store.checkpoint_path, store.audit_key
    assert path is not None
    head = read_unsigned(path)
    if head is None or key is None:
        return None
    replace_checkpoint(path, head, key=key)
    log.warning("audit checkpoint %s: signed with the new audit key (key id %s)", path,
                key_id(key))
    return head


def _alert(store: Store, state: dict[str, Any]) -> AuditRow:
    path = store.checkpoint_path
    assert path is not None
    kind = GARBLED if state["state"] == "garbled" else MISSING
    moved = set_aside(path) if kind == GARBLED else None
    detail = {"reason": state["problem"], "checkpoint": str(path),
              "moved_to": str(moved) if moved else None,
              "db_head": _head_detail(store.audit_head())}
    row = store.append_anchored(kind, detail=detail)
    log.error("audit checkpoint %s; recorded as audit row #%d (%s). `naosctl audit verify` "
              "fails until an operator has investigated and run `naosctl audit reanchor "
              "--yes`", state["problem"], row.seq, kind)
    return row


def reanchor(store: Store, *, actor: str = "naosctl") -> AuditRow:
    """Acknowledge the checkpoint's state: an ``audit.reanchor`` row with the
    old checkpoint and the log's head, then a checkpoint at that row.

    Raises:
        AuditError: if no checkpoint is configured.
    """
    if store.checkpoint_path is None:
        raise AuditError("no audit checkpoint is configured")
    before = store.verify_audit()
    old = checkpoint_state(store)
    moved = set_aside(store.checkpoint_path) if old["state"] == "garbled" else None
    detail = {"old_checkpoint": {k: old[k] for k in ("state", "seq", "hash", "problem")},
              "moved_to": str(moved) if moved else None,
              "new": _head_detail(store.audit_head()),
              "verify_before": {"ok": before.ok, "reason": before.reason,
                                "alert_seq": before.alert_seq}}
    row = store.append_anchored(REANCHOR_TYPE, actor=actor, detail=detail)
    log.warning("audit checkpoint re-anchored at row #%d by %s (was %s)", row.seq, actor,
                old["state"])
    return row


def export_head(store: Store) -> SignedHead:
    """The log's last row (seq, hash, ts) signed with the audit key.

    Raises:
        AuditError: without an audit key.
    """
    key = store.audit_key
    if key is None:
        raise AuditError("no audit key: the head cannot be signed")
    last = store.audit_tail(1)
    if not last:
        return sign_head(key, 0, GENESIS, "")
    return sign_head(key, last[0].seq, last[0].hash, last[0].ts)
