"""Pure tests of naosd.storage.audit: canonical encoding, the hash chain, verify_rows."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from naosd.errors import AuditError
from naosd.storage.audit import (
    GENESIS,
    AuditRow,
    Checkpoint,
    canonical,
    chain_hash,
    format_ts,
    make_row,
    verify_rows,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)

# -- strategies ----------------------------------------------------------------

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
details = st.dictionaries(st.text(max_size=5), json_values, max_size=4)
events = st.fixed_dictionaries(
    {
        "actor": st.text(min_size=1, max_size=8),
        "agent": st.none() | st.text(max_size=8),
        "type": st.text(min_size=1, max_size=12),
        "detail": details,
    }
)
chains = st.lists(events, min_size=1, max_size=8)


def build_chain(evs: Sequence[dict[str, Any]]) -> list[AuditRow]:
    rows: list[AuditRow] = []
    for i, ev in enumerate(evs):
        prev = Checkpoint(rows[-1].seq, rows[-1].hash) if rows else None
        rows.append(make_row(prev, ts=format_ts(T0 + timedelta(seconds=i)), **ev))
    return rows


def head(rows: Sequence[AuditRow]) -> Checkpoint:
    return Checkpoint(rows[-1].seq, rows[-1].hash)


# -- canonical -----------------------------------------------------------------


def test_canonical_is_sorted_compact_utf8() -> None:
    assert canonical({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == (
        '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    )


def test_canonical_ignores_insertion_order() -> None:
    assert canonical({"x": 1, "y": 2}) == canonical({"y": 2, "x": 1})


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"x": math.nan}, id="nan"),
        pytest.param({"x": math.inf}, id="inf"),
        pytest.param({"x": [-math.inf]}, id="nested-minus-inf"),
        pytest.param({"x": {1: "a"}}, id="int-key"),
        pytest.param({"x": {1, 2}}, id="set"),
        pytest.param({"x": b"bytes"}, id="bytes"),
        pytest.param({"x": "\ud800"}, id="lone-surrogate"),
    ],
)
def test_canonical_rejects_what_json_cannot_round_trip(event: dict[str, Any]) -> None:
    with pytest.raises(AuditError):
        canonical(event)


@given(details)
def test_canonical_round_trips(detail: dict[str, Any]) -> None:
    encoded = canonical(detail)
    assert canonical(json.loads(encoded)) == encoded


# -- hashing and rows ------------------------------------------------------------

GOLDEN_FIELDS: dict[str, Any] = {
    "seq": 1,
    "ts": "2025-01-01T00:00:00.000000Z",
    "actor": "naosd",
    "agent": None,
    "type": "daemon.start",
    "detail": {"b": [1, 2.5, True], "a": "é"},
}


def test_chain_hash_is_sha256_of_prev_and_canonical_fields() -> None:
    expected = hashlib.sha256(GENESIS.encode() + canonical(GOLDEN_FIELDS)).hexdigest()
    assert chain_hash(GENESIS, GOLDEN_FIELDS) == expected


def test_chain_hash_golden_value_never_changes() -> None:
    # Changing this value orphans every audit log ever written: don't.
    assert chain_hash(GENESIS, GOLDEN_FIELDS) == (
        "ca37b186b59be93f0e8a523d486a54172e12c263cea490907aefcb873c723d95"
    )


def test_chain_hash_rejects_non_ascii_prev_hash() -> None:
    with pytest.raises(AuditError):
        chain_hash("é" * 64, GOLDEN_FIELDS)


def test_format_ts_is_utc_with_microseconds_and_z() -> None:
    cet = timezone(timedelta(hours=1))
    assert format_ts(datetime(2025, 1, 1, 1, 0, 0, tzinfo=cet)) == "2025-01-01T00:00:00.000000Z"
    assert format_ts(datetime(2025, 6, 30, 23, 59, 59, 123, tzinfo=UTC)) == (
        "2025-06-30T23:59:59.000123Z"
    )


def test_format_ts_rejects_naive_datetimes() -> None:
    with pytest.raises(AuditError, match="aware"):
        format_ts(datetime(2025, 1, 1))  # naive on purpose


def test_make_row_links_to_prev_and_genesis() -> None:
    first = make_row(None, ts="t", actor="a", agent=None, type="x", detail={})
    second = make_row(
        Checkpoint(first.seq, first.hash), ts="t", actor="a", agent="g", type="y", detail={"k": 1}
    )
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert second.hash == chain_hash(first.hash, second.fields())


def test_make_row_deep_copies_detail_as_it_will_read_back() -> None:
    detail: dict[str, Any] = {"list": [1], "tuple": (1, 2)}
    row = make_row(None, ts="t", actor="a", agent=None, type="x", detail=detail)
    detail["list"].append(2)
    assert row.detail == {"list": [1], "tuple": [1, 2]}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"type": ""}, id="empty-type"),
        pytest.param({"actor": ""}, id="empty-actor"),
        pytest.param({"agent": 3}, id="int-agent"),
        pytest.param({"ts": None}, id="no-ts"),
        pytest.param({"detail": ["not", "a", "dict"]}, id="list-detail"),
        pytest.param({"detail": {"x": math.nan}}, id="nan-detail"),
    ],
)
def test_make_row_rejects_bad_fields(bad: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"ts": "t", "actor": "a", "agent": None, "type": "x", "detail": {}}
    with pytest.raises(AuditError):
        make_row(None, **(fields | bad))


def test_to_dict_has_every_column() -> None:
    row = make_row(None, ts="t", actor="a", agent="g", type="x", detail={"k": [1]})
    assert row.to_dict() == {
        "seq": 1,
        "ts": "t",
        "actor": "a",
        "agent": "g",
        "type": "x",
        "detail": {"k": [1]},
        "prev_hash": GENESIS,
        "hash": row.hash,
    }
    json.dumps(row.to_dict())  # wire-ready


# -- verify_rows: fixed cases -------------------------------------------------------


def test_empty_log_verifies() -> None:
    result = verify_rows([], checkpoint=None)
    assert (result.ok, result.checked, result.head_seq, result.head_hash) == (True, 0, 0, GENESIS)


def test_empty_log_with_a_checkpoint_reports_deleted_rows() -> None:
    result = verify_rows([], checkpoint=Checkpoint(3, "a" * 64))
    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_lagging_checkpoint_is_fine() -> None:
    rows = build_chain([{"actor": "a", "agent": None, "type": "t", "detail": {}}] * 5)
    result = verify_rows(rows, checkpoint=Checkpoint(3, rows[2].hash))
    assert result.ok
    assert (result.checked, result.head_seq, result.head_hash) == (5, 5, rows[-1].hash)


def test_checkpoint_hash_mismatch_names_the_checkpoint_row() -> None:
    rows = build_chain([{"actor": "a", "agent": None, "type": "t", "detail": {}}] * 5)
    result = verify_rows(rows, checkpoint=Checkpoint(4, "f" * 64))
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 4, 3)
    assert "checkpoint" in result.reason


def test_malformed_checkpoint_is_not_ok() -> None:
    rows = build_chain([{"actor": "a", "agent": None, "type": "t", "detail": {}}])
    result = verify_rows(rows, checkpoint=Checkpoint(-1, "f" * 64))
    assert (result.ok, result.first_bad_seq) == (False, None)


def test_first_row_must_link_to_genesis() -> None:
    rows = build_chain([{"actor": "a", "agent": None, "type": "t", "detail": {}}] * 3)
    result = verify_rows(rows[1:], checkpoint=None)
    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_renumbered_insert_with_a_valid_hash_breaks_the_next_row() -> None:
    # An attacker who recomputes the forged row's hash makes that row valid;
    # the break shows at the displaced row after it. Appending such a row
    # at the very end is undetectable by design (anyone can run sha256).
    rows = build_chain([{"actor": "a", "agent": None, "type": "t", "detail": {}}] * 4)
    forged = make_row(
        Checkpoint(2, rows[1].hash), ts="t", actor="evil", agent=None, type="t", detail={}
    )
    tampered = [*rows[:2], forged, *(replace(r, seq=r.seq + 1) for r in rows[2:])]
    result = verify_rows(tampered, checkpoint=None)
    assert (result.ok, result.first_bad_seq) == (False, 4)


def test_unhashable_row_is_reported_not_raised() -> None:
    rows = build_chain([{"actor": "a", "agent": None, "type": "t", "detail": {}}] * 2)
    broken = [rows[0], replace(rows[1], detail={"x": math.nan})]
    result = verify_rows(broken, checkpoint=None)
    assert (result.ok, result.first_bad_seq) == (False, 2)


# -- verify_rows: properties ------------------------------------------------------


@given(chains, st.data())
def test_any_appended_chain_verifies(evs: list[dict[str, Any]], data: st.DataObject) -> None:
    rows = build_chain(evs)
    k = data.draw(st.integers(0, len(rows)), label="checkpoint seq")
    checkpoint = Checkpoint(k, rows[k - 1].hash if k else GENESIS)
    for cp in (None, checkpoint, head(rows)):
        result = verify_rows(iter(rows), checkpoint=cp)
        assert result.ok, result.reason
        assert (result.checked, result.head_seq, result.head_hash) == (
            len(rows),
            len(rows),
            rows[-1].hash,
        )


def _edit(rows: list[AuditRow], i: int, field: int) -> list[AuditRow]:
    row = rows[i - 1]
    changes: list[dict[str, Any]] = [
        {"detail": {**row.detail, "tampered-key": True}},  # longer than any drawn key
        {"actor": row.actor + "!"},
        {"type": row.type + "!"},
        {"agent": None if row.agent is not None else "intruder"},
        {"ts": row.ts.replace("2025", "2024")},
        {"hash": "f" * 64 if row.hash != "f" * 64 else "e" * 64},
    ]
    return [*rows[: i - 1], replace(row, **changes[field]), *rows[i:]]


@given(chains, st.data())
def test_any_single_edit_is_detected_at_its_seq(
    evs: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = build_chain(evs)
    i = data.draw(st.integers(1, len(rows)), label="edited seq")
    field = data.draw(st.integers(0, 5), label="edited field")
    for cp in (None, head(rows)):
        result = verify_rows(_edit(rows, i, field), checkpoint=cp)
        assert (result.ok, result.first_bad_seq, result.checked) == (False, i, i - 1)


@given(chains, st.data())
def test_any_single_delete_is_detected_at_its_seq(
    evs: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = build_chain(evs)
    i = data.draw(st.integers(1, len(rows)), label="deleted seq")
    tampered = rows[: i - 1] + rows[i:]
    result = verify_rows(tampered, checkpoint=head(rows))
    assert (result.ok, result.first_bad_seq) == (False, i)
    if i < len(rows):  # a middle row is caught even without a checkpoint
        assert verify_rows(tampered, checkpoint=None).first_bad_seq == i


@given(chains, st.data())
def test_deleting_the_last_rows_is_caught_by_the_checkpoint(
    evs: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = build_chain(evs)
    k = data.draw(st.integers(1, len(rows)), label="rows deleted")
    kept = rows[: len(rows) - k]
    result = verify_rows(kept, checkpoint=head(rows))
    assert (result.ok, result.first_bad_seq) == (False, len(rows) - k + 1)
    assert verify_rows(kept, checkpoint=None).ok  # why the checkpoint exists


@given(chains, events, st.data())
def test_any_single_insert_is_detected_at_its_seq(
    evs: list[dict[str, Any]], ev: dict[str, Any], data: st.DataObject
) -> None:
    rows = build_chain(evs)
    i = data.draw(st.integers(1, len(rows)), label="inserted before seq")
    prev = Checkpoint(i - 1, rows[i - 2].hash) if i > 1 else None
    forged = make_row(prev, ts="2030-01-01T00:00:00.000000Z", **ev)
    # Same seq as the row it pushes down: that row becomes a duplicate.
    duplicate = [*rows[: i - 1], forged, *rows[i - 1 :]]
    assert verify_rows(duplicate, checkpoint=None).first_bad_seq == i
    # Renumbered, but the forger did not recompute a hash: the forged row fails.
    bogus = replace(forged, hash="0" * 64)
    renumbered = [*rows[: i - 1], bogus, *(replace(r, seq=r.seq + 1) for r in rows[i - 1 :])]
    result = verify_rows(renumbered, checkpoint=None)
    assert (result.ok, result.first_bad_seq) == (False, i)


@given(chains, st.data())
def test_any_swap_is_detected_at_the_lower_seq(
    evs: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = build_chain(evs)
    if len(rows) < 2:
        return
    i = data.draw(st.integers(1, len(rows) - 1), label="first swapped seq")
    j = data.draw(st.integers(i + 1, len(rows)), label="second swapped seq")
    a, b = rows[i - 1], rows[j - 1]
    # Rows moved as a whole (seq travels with them) ...
    moved = list(rows)
    moved[i - 1], moved[j - 1] = b, a
    # ... or their contents swapped under fixed seqs (an UPDATE of two rows).
    swapped = list(rows)
    swapped[i - 1], swapped[j - 1] = replace(b, seq=i), replace(a, seq=j)
    for tampered in (moved, swapped):
        result = verify_rows(tampered, checkpoint=head(rows))
        assert (result.ok, result.first_bad_seq) == (False, i)
