"""Refusals audited in aggregate (naosd.control.refusals): the pure Tally with
time as data, and the shell writing real audit rows into a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from naosd.control.peers import Peer
from naosd.control.refusals import AuditedRefusals, Report, Tally
from naosd.storage.db import AsyncStore

REFUSED = ("client.refused", "65534")


def test_the_first_refusal_of_a_quiet_key_is_reported_at_once():
    tally = Tally(interval=60)
    assert tally.note(REFUSED, {"n": 1}, now=100.0) == Report(REFUSED, 1, {"n": 1})
    assert tally.next_due() == 160.0


def test_the_rest_of_the_interval_is_one_report_with_its_count():
    tally = Tally(interval=60)
    tally.note(REFUSED, {"n": 0}, now=100.0)
    for i in range(1, 300):
        assert tally.note(REFUSED, {"n": i}, now=100.0 + i / 10) is None
    assert tally.due(now=159.9) == []
    assert tally.due(now=160.0) == [Report(REFUSED, 299, {"n": 299})]
    # a new interval started: the next refusal is counted, not reported at once
    assert tally.note(REFUSED, {"n": 300}, now=161.0) is None
    assert tally.due(now=220.0) == [Report(REFUSED, 1, {"n": 300})]


def test_a_key_with_nothing_counted_becomes_quiet_again():
    tally = Tally(interval=60)
    tally.note(REFUSED, {}, now=0.0)
    assert tally.due(now=60.0) == []
    assert tally.next_due() is None
    assert tally.note(REFUSED, {}, now=61.0) == Report(REFUSED, 1, {})


def test_keys_are_counted_apart_and_drained_at_stop():
    tally = Tally(interval=60)
    other = ("client.denied", "1001", "agent.create")
    for key in (REFUSED, other, REFUSED, other, other):
        tally.note(key, {}, now=1.0)
    assert sorted(tally.drain(), key=lambda r: r.key) == [
        Report(other, 2, {}), Report(REFUSED, 1, {})]
    assert tally.drain() == [] and tally.next_due() is None


def test_past_the_key_limit_new_keys_share_one_count():
    tally = Tally(interval=60, max_keys=2)
    tally.note(("client.refused", "1"), {}, now=0.0)
    tally.note(("client.refused", "2"), {}, now=0.0)
    first = tally.note(("client.refused", "3"), {"uid": 3}, now=0.0)
    assert first == Report(("client.refused", "*"), 1, {"uid": 3, "overflow": True})
    assert tally.note(("client.refused", "4"), {"uid": 4}, now=0.0) is None
    assert tally.drain() == [Report(("client.refused", "*"), 1, {"uid": 4, "overflow": True})]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    db = await AsyncStore.open(tmp_path / "naos.db", checkpoint=tmp_path / "audit.head",
                               synchronous="full", busy_timeout_ms=1000)
    try:
        yield db
    finally:
        await db.close()


async def rows(store: AsyncStore, kind: str) -> list[dict]:
    found = await store.call(lambda s: s.audit_tail(1000, type=kind))
    return [r.detail for r in found]


async def test_300_refusals_write_two_rows(store: AsyncStore):
    refusals = AuditedRefusals(store.audit, interval=3600)
    for pid in range(300):
        refusals.refused(Peer(pid, 65534, 65534), "uid 65534 is not allowed")
    await refusals.close()
    assert await rows(store, "client.refused") == [
        {"uid": 65534, "gid": 65534, "pid": 0, "reason": "uid 65534 is not allowed",
         "count": 1},
        {"uid": 65534, "gid": 65534, "pid": 299, "reason": "uid 65534 is not allowed",
         "count": 299},
    ]


async def test_denied_calls_are_counted_per_uid_and_method(store: AsyncStore):
    refusals = AuditedRefusals(store.audit, interval=3600)
    for _ in range(5):
        refusals.denied(Peer(9, 1002, 1002), "agent.create", "operate", "reader")
    refusals.denied(Peer(9, 1002, 1002), "shutdown", "operate", "reader")
    await refusals.close()
    got = await rows(store, "client.denied")
    assert [(r["method"], r["count"]) for r in got] == [
        ("agent.create", 1), ("shutdown", 1), ("agent.create", 4)]
    assert got[0] == {"uid": 1002, "pid": 9, "method": "agent.create", "needs": "operate",
                      "role": "reader", "count": 1}


async def test_the_interval_timer_writes_the_count_without_a_stop(store: AsyncStore):
    refusals = AuditedRefusals(store.audit, interval=0.05)
    for _ in range(3):
        refusals.refused(Peer(1, 65534, 65534), "no")
    for _ in range(200):  # wait for the timer's row (not a timing assertion)
        if len(await rows(store, "client.refused")) == 2:
            break
        await asyncio.sleep(0.05)
    assert [r["count"] for r in await rows(store, "client.refused")] == [1, 2]
    await refusals.close()
    assert len(await rows(store, "client.refused")) == 2
