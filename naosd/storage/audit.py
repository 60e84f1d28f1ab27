"""The audit log's pure logic: canonical event encoding and the hash chain.

Every audit row links to the one before it::

    hash_n = sha256(ascii(hash_{n-1}) || canonical(fields_n)).hexdigest()

where ``fields_n`` are the row's ``seq``, ``ts``, ``actor``, ``agent``, ``type``
and ``detail`` and the first row links to :data:`GENESIS`. This module owns the
encoding, the row type and :func:`verify_rows`, which walks a chain and names
the first row that breaks it, checks it against the head checkpoint and an
optional outside anchor, and reports an alert row (a checkpoint found missing
or garbled at start) that no ``audit.reanchor`` row has acknowledged since.
It also signs heads: :func:`sign` is ``HMAC-SHA256(key, label || canonical)``
over a checkpoint or an exported head. It does no I/O and reads no clock
(timestamps come in as arguments), so it imports only the standard library and
``naosd.errors``; ``naosd.storage.store`` is the shell that persists rows.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from naosd.errors import AuditError

GENESIS: Final = "0" * 64
"""The ``prev_hash`` of the first row (seq 1)."""

_TS_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

ALERT_TYPES: Final = ("audit.checkpoint_missing", "audit.checkpoint_garbled")
"""Rows naosd writes when it starts without a trustworthy checkpoint."""
REANCHOR_TYPE: Final = "audit.reanchor"
"""The row that acknowledges every alert before it (``naosctl audit reanchor``)."""
CHECKPOINT_LABEL: Final = "naos audit checkpoint v1"
HEAD_LABEL: Final = "naos audit head v1"
HEAD_FORMAT: Final = "naos-audit-head-v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical(event: dict[str, Any]) -> bytes:
    """Encode ``event`` as deterministic UTF-8 JSON (sorted keys, no spaces).

    Decoding the result and encoding it again gives the same bytes, which is
    what lets a row read back from the database re-hash to its stored hash.

    Raises:
        AuditError: if the event holds something JSON cannot carry exactly:
            a NaN or infinite float, a non-string dict key, a lone surrogate,
            or a value of a non-JSON type.
    """
    _check_json(event)
    try:
        text = json.dumps(
            event,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return text.encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise AuditError(f"audit event cannot be encoded: {exc}") from exc


def _check_json(value: object) -> None:
    """Reject what ``json.dumps`` would accept but not round-trip exactly."""
    # Exact types first: this runs on every append and ABC checks are slow.
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"audit event keys must be str, got {key!r}")
            _check_json(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_json(item)
    elif not isinstance(value, str | int | float):  # subclasses (e.g. IntEnum)
        raise AuditError(f"audit events cannot hold {kind.__name__}")


def chain_hash(prev_hash: str, event_fields: dict[str, Any]) -> str:
    """Return the hex sha256 linking ``event_fields`` to ``prev_hash``.

    Raises:
        AuditError: if ``prev_hash`` is not ASCII or the fields cannot be
            encoded (see :func:`canonical`).
    """
    try:
        prefix = prev_hash.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise AuditError(f"prev_hash is not an ASCII string: {prev_hash!r}") from exc
    return hashlib.sha256(prefix + canonical(event_fields)).hexdigest()


def format_ts(moment: datetime) -> str:
    """Format an aware datetime as UTC ISO-8601 with microseconds and ``Z``.

    Raises:
        AuditError: if ``moment`` is naive (its zone would be a guess).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise AuditError(f"audit timestamps need an aware datetime, got {moment!r}")
    return moment.astimezone(UTC).strftime(_TS_FORMAT)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit event with its place in the chain."""

    seq: int
    ts: str
    actor: str
    agent: str | None
    type: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any]:
        """The hashed fields of this row (everything but the two hashes)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "agent": self.agent,
            "type": self.type,
            "detail": self.detail,
        }

    def to_dict(self) -> dict[str, Any]:
        """All columns as a plain dict (for JSON export and the wire)."""
        out = self.fields()
        out["detail"] = copy.deepcopy(self.detail)  # callers may mutate theirs
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A (seq, hash) pair remembered outside the database."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What :func:`verify_rows` found.

    ``checked`` counts the rows that verified; ``head_seq``/``head_hash`` are
    the last of them (0 and :data:`GENESIS` when none did), i.e. the end of
    the trusted prefix. ``first_bad_seq`` is None when ``ok``, and also when a
    problem cannot be pinned to a row (e.g. a missing checkpoint file).
    ``alert_seq`` is the unacknowledged alert row, if that is the problem.
    """

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int
    head_hash: str
    alert_seq: int | None = None


# --------------------------------------------------------------------------
# Signed heads


def sign(key: bytes, label: str, fields: dict[str, Any]) -> str:
    """Hex ``HMAC-SHA256(key, label || 0x00 || canonical(fields))``."""
    return hmac.new(key, label.encode() + b"\0" + canonical(fields), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name for ``key`` (which key signed a head)."""
    return sign(key, "naos audit key id", {})[:16]


@dataclass(frozen=True, slots=True)
class SignedHead:
    """An exported chain head: ``seq``, ``hash`` and ``ts`` of the last row,
    signed with the audit key. It proves integrity only to holders of the key."""

    seq: int
    hash: str
    ts: str
    key_id: str
    mac: str

    def fields(self) -> dict[str, Any]:
        return {"format": HEAD_FORMAT, "seq": self.seq, "hash": self.hash, "ts": self.ts,
                "key_id": self.key_id}

    def to_dict(self) -> dict[str, Any]:
        return {**self.fields(), "mac": self.mac}


def sign_head(key: bytes, seq: int, hash: str, ts: str) -> SignedHead:
    unsigned = SignedHead(seq, hash, ts, key_id(key), "")
    return replace(unsigned, mac=sign(key, HEAD_LABEL, unsigned.fields()))


def parse_head(data: object) -> SignedHead:
    """A SignedHead from its exported dict.

    Raises:
        AuditError: naming what is missing or malformed.
    """
    if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT:
        raise AuditError(f"not an exported audit head (format {HEAD_FORMAT!r} expected)")
    seq, digest, ts = data.get("seq"), data.get("hash"), data.get("ts")
    kid, mac = data.get("key_id"), data.get("mac")
    if type(seq) is not int or seq < 0:
        raise AuditError(f"exported head: seq must be an integer >= 0, got {seq!r}")
    for name, value in (("hash", digest), ("mac", mac)):
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise AuditError(f"exported head: {name} must be 64 hex digits, got {value!r}")
    if not isinstance(ts, str) or not isinstance(kid, str):
        raise AuditError("exported head: ts and key_id must be strings")
    return SignedHead(seq, str(digest), ts, kid, str(mac))


def head_problem(key: bytes, head: SignedHead) -> str | None:
    """Why ``head`` was not signed with ``key``, or None when it was."""
    if head.key_id != key_id(key):
        return (f"the anchor was signed with key {head.key_id}, this daemon's audit key is "
                f"{key_id(key)}")
    if not hmac.compare_digest(head.mac, sign(key, HEAD_LABEL, head.fields())):
        return "the anchor's signature does not verify (edited or forged)"
    return None


def make_row(
    prev: Checkpoint | None,
    *,
    ts: str,
    actor: str,
    agent: str | None,
    type: str,
    detail: dict[str, Any],
) -> AuditRow:
    """Build the row that follows ``prev`` (None: the first row).

    Raises:
        AuditError: if a field has the wrong type or cannot be encoded.
    """
    _check_fields(ts=ts, actor=actor, agent=agent, type_=type, detail=detail)
    prev_seq, prev_hash = (0, GENESIS) if prev is None else (prev.seq, prev.hash)
    # Round-trip detail through its encoding: the row we return is then a deep
    # copy equal to the one read back later (tuples already lists, and so on).
    copied: dict[str, Any] = json.loads(canonical(detail))
    row = AuditRow(prev_seq + 1, ts, actor, agent, type, copied, prev_hash, hash="")
    return replace(row, hash=chain_hash(prev_hash, row.fields()))


def _check_fields(
    *, ts: object, actor: object, agent: object, type_: object, detail: object
) -> None:
    if not isinstance(type_, str) or not type_:
        raise AuditError(f"audit type must be a non-empty str, got {type_!r}")
    if not isinstance(actor, str) or not actor:
        raise AuditError(f"audit actor must be a non-empty str, got {actor!r}")
    if agent is not None and not isinstance(agent, str):
        raise AuditError(f"audit agent must be a str or None, got {agent!r}")
    if not isinstance(ts, str):
        raise AuditError(f"audit ts must be a str, got {ts!r}")
    if not isinstance(detail, dict):
        raise AuditError(f"audit detail must be a dict, got {type(detail).__name__}")


class _Walk:
    """The running state of :func:`verify_rows`: the last row that verified,
    and the last alert row not acknowledged since."""

    __slots__ = ("alert", "checked", "head_hash", "head_seq")

    def __init__(self) -> None:
        self.checked = 0
        self.head_seq = 0
        self.head_hash = GENESIS
        self.alert: AuditRow | None = None

    def bad(self, seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, self.checked, seq, reason, self.head_seq, self.head_hash)

    def good(self, reason: str) -> VerifyResult:
        return VerifyResult(True, self.checked, None, reason, self.head_seq, self.head_hash)

    def take(self, row: AuditRow) -> None:
        self.checked += 1
        self.head_seq, self.head_hash = row.seq, row.hash
        if row.type in ALERT_TYPES:
            self.alert = row
        elif row.type == REANCHOR_TYPE:
            self.alert = None


def verify_rows(rows: Iterable[AuditRow], *, checkpoint: Checkpoint | None,
                anchor: Checkpoint | None = None) -> VerifyResult:
    """Walk ``rows`` (expected in seq order from 1) and check every link.

    Detects an edited row (stored hash differs from the recomputed one), a
    deleted row (seq gap), an inserted or moved row (duplicate or
    out-of-order seq, or a ``prev_hash`` that does not link to the row
    before), and deleted last rows (``checkpoint`` beyond the last row, or the
    row at ``checkpoint.seq`` with another hash). A checkpoint behind the last
    row is fine: the process may have died between commit and checkpoint.
    ``anchor`` (an exported head kept outside) is checked the same way.
    Finally, an alert row with no ``audit.reanchor`` after it fails the check
    (``alert_seq``), though every row verified.

    Stops at the first problem and names its seq: for a missing row, the first
    missing seq. Never raises for bad data; that is what the result reports.
    """
    walk = _Walk()
    for row in rows:
        problem = _check_row(row, walk)
        if problem is None:
            problem = _check_against(row, checkpoint, "the checkpoint")
        if problem is None:
            problem = _check_against(row, anchor, "the anchor")
        if problem is not None:
            return walk.bad(*problem)
        walk.take(row)
    result = _check_tail(walk, checkpoint)
    if result.ok and anchor is not None and anchor.seq > walk.head_seq:
        return walk.bad(walk.head_seq + 1, f"the anchor records seq {anchor.seq} but the log "
                                           f"ends at seq {walk.head_seq} (rows deleted)")
    if result.ok and walk.alert is not None:
        alert = walk.alert
        why = alert.detail.get("reason", "")
        return replace(walk.bad(None, (
            f"unacknowledged alert at #{alert.seq} ({alert.type}"
            f"{': ' + str(why) if why else ''}); investigate, then run "
            "`naosctl audit reanchor --yes`")), alert_seq=alert.seq)
    return result


def _check_row(row: AuditRow, walk: _Walk) -> tuple[int, str] | None:
    expected = walk.head_seq + 1
    if row.seq > expected:
        last = row.seq - 1
        missing = f"row {expected}" if last == expected else f"rows {expected}..{last}"
        return (
            expected,
            f"{missing} missing (seq jumps from {walk.head_seq} to {row.seq})",
        )
    if row.seq < expected:
        return (
            row.seq,
            f"row {row.seq} is duplicated or out of order (after {walk.head_seq})",
        )
    if row.prev_hash != walk.head_hash:
        return row.seq, (
            f"row {row.seq} does not link to row {walk.head_seq} (inserted, moved or replaced row)"
        )
    try:
        digest = chain_hash(row.prev_hash, row.fields())
    except AuditError as exc:
        return row.seq, f"row {row.seq} cannot be re-hashed: {exc}"
    if digest != row.hash:
        return (
            row.seq,
            f"row {row.seq} was edited (its content does not match its hash)",
        )
    return None


def _check_against(row: AuditRow, mark: Checkpoint | None, what: str) -> tuple[int, str] | None:
    if mark is None or row.seq != mark.seq or row.hash == mark.hash:
        return None
    return row.seq, f"row {row.seq} differs from {what} (the log was rewritten from here)"


def _check_tail(walk: _Walk, checkpoint: Checkpoint | None) -> VerifyResult:
    if checkpoint is None:
        return walk.good(f"chain intact: {walk.checked} rows, no checkpoint")
    if checkpoint.seq < 0 or (checkpoint.seq == 0 and checkpoint.hash != GENESIS):
        return walk.bad(None, f"checkpoint {checkpoint} is malformed")
    if checkpoint.seq > walk.head_seq:
        return walk.bad(
            walk.head_seq + 1,
            f"checkpoint records seq {checkpoint.seq} but the log ends at "
            f"seq {walk.head_seq} (last rows deleted)",
        )
    return walk.good(f"chain intact: {walk.checked} rows, checkpoint at seq {checkpoint.seq}")
