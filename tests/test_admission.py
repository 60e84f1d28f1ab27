"""Connection limits (naosd.control.admission): per uid, in all, and the
slots only naosd's owner and root may take."""

from __future__ import annotations

from naosd.control.admission import OWNER_SLOTS, Limits

LIMITS = Limits(max_connections=10, per_uid=3, owner_uid=1000)


def test_a_uid_gets_its_share_then_is_refused_by_name():
    assert LIMITS.refusal(1001, {1001: 2}) is None
    assert LIMITS.refusal(1001, {1001: 3}) == (
        "too many connections from uid 1001 (limit 3 per uid: daemon.max_connections_per_uid)")
    assert LIMITS.refusal(1002, {1001: 3}) is None  # another uid is not held back


def test_the_owner_and_root_have_no_per_uid_cap():
    assert LIMITS.refusal(1000, {1000: 9}) is None
    assert LIMITS.refusal(0, {0: 9}) is None


def test_the_last_slots_are_kept_for_the_owner_and_root():
    others = {1001: 3, 1002: 3, 1003: 2}  # 8 of 10: only the kept slots are left
    assert 10 - sum(others.values()) == OWNER_SLOTS
    assert LIMITS.refusal(1004, others) == (
        "too many connections (limit 10; the last 2 are kept for naosd's owner and root)")
    assert LIMITS.refusal(1000, others) is None
    assert LIMITS.refusal(0, {**others, 1000: 1}) is None
    assert LIMITS.refusal(1000, {**others, 1000: 1, 0: 1}) == "too many connections (limit 10)"


def test_a_limit_of_one_keeps_no_slot():
    one = Limits(max_connections=1, per_uid=32, owner_uid=1000)
    assert one.kept == 0
    assert one.refusal(1001, {}) is None
    assert one.refusal(1000, {1001: 1}) == "too many connections (limit 1)"
