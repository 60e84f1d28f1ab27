"""The trust gate (actors/domain/trust.py): AXIS tiers, ratings, caps and decisions."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.domain import trust as tr
from actors.domain.trust import (
    DEFAULT_CAPS,
    Decision,
    Rating,
    Tier,
    TrustDenied,
    TrustPolicy,
    TrustRecord,
    TrustSource,
)
from naosd.errors import InvalidRequest, from_wire

USD = 1_000_000
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def record(t: int = 700, c: int = 650, age_s: float = 0, source: str = "axis") -> TrustRecord:
    return TrustRecord("auid-42", t, c, NOW - timedelta(seconds=age_s), TrustSource(source))


def decide(policy: TrustPolicy, rec: TrustRecord | None, cost: int, **kw: Any) -> Decision:
    return tr.decide(policy, rec, cost, NOW, **({"max_age_s": 300} | kw))


# -- scores ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "tier"),
    [
        pytest.param(0, Tier.T1, id="0"),
        pytest.param(199, Tier.T1, id="199"),
        pytest.param(200, Tier.T2, id="200"),
        pytest.param(399, Tier.T2, id="399"),
        pytest.param(400, Tier.T3, id="400"),
        pytest.param(599, Tier.T3, id="599"),
        pytest.param(600, Tier.T4, id="600"),
        pytest.param(799, Tier.T4, id="799"),
        pytest.param(800, Tier.T5, id="800"),
        pytest.param(1000, Tier.T5, id="1000"),
    ],
)
def test_tier_of(score: int, tier: Tier) -> None:
    assert tr.tier_of(score) is tier
    assert tier.floor <= score


@pytest.mark.parametrize(
    ("score", "rating"),
    [
        pytest.param(1000, Rating.AAA, id="1000"),
        pytest.param(900, Rating.AAA, id="900"),
        pytest.param(899, Rating.AA, id="899"),
        pytest.param(750, Rating.AA, id="750"),
        pytest.param(749, Rating.A, id="749"),
        pytest.param(600, Rating.A, id="600"),
        pytest.param(599, Rating.BBB, id="599"),
        pytest.param(400, Rating.BBB, id="400"),
        pytest.param(399, Rating.BB, id="399"),
        pytest.param(200, Rating.BB, id="200"),
        pytest.param(199, Rating.D, id="199"),
        pytest.param(0, Rating.D, id="0"),
    ],
)
def test_rating_of(score: int, rating: Rating) -> None:
    assert tr.rating_of(score) is rating
    assert rating.floor <= score


@pytest.mark.parametrize(
    "score",
    [
        pytest.param(-1, id="negative"),
        pytest.param(1001, id="over"),
        pytest.param(500.0, id="float"),
        pytest.param(True, id="bool"),
    ],
)
def test_scores_are_whole_numbers_from_0_to_1000(score: Any) -> None:
    with pytest.raises(InvalidRequest, match="T-Score must be a whole number from 0 to 1000"):
        tr.tier_of(score)
    with pytest.raises(InvalidRequest, match="C-Score must be a whole number from 0 to 1000"):
        tr.rating_of(score)


def test_labels_ranks_and_default_caps() -> None:
    assert [t.label for t in Tier] == [
        "untrusted",
        "provisional",
        "established",
        "trusted",
        "verified",
    ]
    assert sorted(Rating, key=lambda r: r.rank) == [
        Rating.D,
        Rating.BB,
        Rating.BBB,
        Rating.A,
        Rating.AA,
        Rating.AAA,
    ]
    assert dict(DEFAULT_CAPS) == {
        Rating.AAA: None,
        Rating.AA: 100_000 * USD,
        Rating.A: 10_000 * USD,
        Rating.BBB: 1_000 * USD,
        Rating.BB: tr.MICRO_PAYMENT_MAX,
        Rating.D: 0,
    }
    assert tr.MICRO_PAYMENT_MAX == USD


# -- policies -------------------------------------------------------------------------


def test_policy_coerces_strings_and_keeps_explicit_caps_only() -> None:
    policy = TrustPolicy("t3", 450, "bbb", {"aa": 5 * USD})  # type: ignore[arg-type, dict-item]
    assert (policy.min_tier, policy.min_rating) == (Tier.T3, Rating.BBB)
    assert policy.caps == {Rating.AA: 5 * USD}
    assert policy.cap_for(Rating.AA) == 5 * USD
    assert policy.cap_for(Rating.A) == 10_000 * USD
    assert TrustPolicy(Tier.T2).min_tier is Tier.T2
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert hash(policy) == hash(TrustPolicy(Tier.T3, 450, Rating.BBB))  # caps are not hashed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"min_tier": "T6"}, "invalid tier 'T6'", id="tier"),
        pytest.param({"min_tier": 3}, "invalid tier 3", id="tier-int"),
        pytest.param({"min_t_score": 1001}, "min_t_score must be", id="t-score"),
        pytest.param({"min_rating": "CCC"}, "invalid rating 'CCC'", id="rating"),
        pytest.param({"caps": {"B": 1}}, "invalid rating 'B'", id="cap-key"),
        pytest.param({"caps": {"AA": -1}}, "cap for AA must be micro-dollars", id="cap-negative"),
        pytest.param({"caps": {"AA": 1.5}}, "cap for AA", id="cap-float"),
        pytest.param({"caps": {"AA": False}}, "cap for AA", id="cap-bool"),
    ],
)
def test_policy_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        TrustPolicy(**kwargs)


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        pytest.param(
            TrustPolicy(Tier.T3, 300, Rating.A),
            None,
            TrustPolicy(Tier.T3, 300, Rating.A),
            id="no-override",
        ),
        pytest.param(
            TrustPolicy(Tier.T3, 300, Rating.BB),
            TrustPolicy(Tier.T2, 500, Rating.A),
            TrustPolicy(Tier.T3, 500, Rating.A, dict(DEFAULT_CAPS)),
            id="stricter-of-each",
        ),
        pytest.param(
            TrustPolicy(caps={Rating.AA: None, Rating.A: 50 * USD}),
            TrustPolicy(),
            TrustPolicy(caps=dict(DEFAULT_CAPS) | {Rating.AA: None, Rating.A: 50 * USD}),
            id="silent-override-keeps-relaxed-global-caps",
        ),
        pytest.param(
            TrustPolicy(caps={Rating.AA: None}),
            TrustPolicy(caps={Rating.AA: 7 * USD, Rating.AAA: 9 * USD, Rating.A: None}),
            TrustPolicy(
                caps=dict(DEFAULT_CAPS)
                | {Rating.AA: 7 * USD, Rating.AAA: 9 * USD, Rating.A: 10_000 * USD}
            ),
            id="caps-take-the-lower-none-is-unlimited",
        ),
        pytest.param(
            TrustPolicy(caps={Rating.BBB: 2 * USD}),
            TrustPolicy(caps={Rating.BBB: 3 * USD}),
            TrustPolicy(caps=dict(DEFAULT_CAPS) | {Rating.BBB: 2 * USD}),
            id="override-cannot-loosen",
        ),
    ],
)
def test_merge_takes_the_stricter(
    base: TrustPolicy, override: TrustPolicy | None, expected: TrustPolicy
) -> None:
    assert tr.merge(base, override) == expected


# -- records --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"auid": ""}, "auid must be", id="auid"),
        pytest.param({"t_score": 2000}, "T-Score", id="t-score"),
        pytest.param({"c_score": -5}, "C-Score", id="c-score"),
        pytest.param({"verified_at": datetime(2026, 1, 1)}, "timezone-aware", id="naive"),
        pytest.param({"source": "rumour"}, "invalid trust source 'rumour'", id="source"),
    ],
)
def test_record_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"auid": "a", "t_score": 1, "c_score": 1, "verified_at": NOW} | kwargs
    with pytest.raises(InvalidRequest, match=message):
        TrustRecord(**args)


def test_record_coerces_source_and_derives_tier_and_rating() -> None:
    rec = TrustRecord("a", 650, 910, NOW, "cache")  # type: ignore[arg-type]
    assert (rec.source, rec.tier, rec.rating) == (TrustSource.CACHE, Tier.T4, Rating.AAA)


# -- decisions ------------------------------------------------------------------------

STRICT = TrustPolicy(Tier.T3, 450, Rating.BBB)


@pytest.mark.parametrize(
    ("policy", "rec", "cost", "code", "reason"),
    [
        pytest.param(
            STRICT,
            record(t=350),
            0,
            "below_min_tier",
            "auid-42: T-Score 350 is tier T2 (provisional); "
            "policy requires T3 (established, T-Score 400+)",
            id="min-tier",
        ),
        pytest.param(
            STRICT,
            record(t=420),
            0,
            "below_min_t_score",
            "auid-42: T-Score 420 is below the required 450",
            id="min-t-score",
        ),
        pytest.param(
            STRICT,
            record(c=390),
            0,
            "below_min_rating",
            "auid-42: C-Score 390 rates BB; policy requires BBB (C-Score 400+)",
            id="min-rating",
        ),
        pytest.param(
            TrustPolicy(),
            record(c=250),
            USD + 1,
            "over_cap",
            "auid-42: task costs $1.000001, over the $1.00 per-task cap "
            "for rating BB (C-Score 250)",
            id="bb-micro-payments-only",
        ),
        pytest.param(
            TrustPolicy(),
            record(c=100),
            1,
            "over_cap",
            "auid-42: task costs $0.000001, over the $0.00 per-task cap for rating D (C-Score 100)",
            id="d-gets-nothing",
        ),
        pytest.param(
            TrustPolicy(),
            record(c=800),
            100_000 * USD + 1,
            "over_cap",
            "auid-42: task costs $100,000.000001, over the $100,000.00 per-task cap "
            "for rating AA (C-Score 800)",
            id="aa-cap",
        ),
        pytest.param(
            TrustPolicy(caps={"A": 5 * USD}),  # type: ignore[dict-item]
            record(c=650),
            6 * USD,
            "over_cap",
            "auid-42: task costs $6.00, over the $5.00 per-task cap for rating A (C-Score 650)",
            id="configured-cap",
        ),
        pytest.param(
            TrustPolicy(),
            None,
            0,
            "no_record",
            "no trust record (AXIS unreachable and nothing cached); denied (fail-closed)",
            id="no-record",
        ),
        pytest.param(
            TrustPolicy(),
            record(age_s=301, source="cache"),
            0,
            "stale_record",
            "auid-42: trust record from cache is 301s old (max 300s) and AXIS gave nothing "
            "fresher; denied (fail-closed)",
            id="stale",
        ),
    ],
)
def test_each_denial_names_its_numbers(
    policy: TrustPolicy, rec: TrustRecord | None, cost: int, code: str, reason: str
) -> None:
    decision = decide(policy, rec, cost)
    assert (decision.allow, decision.code, decision.reason) == (False, code, reason)
    with pytest.raises(TrustDenied) as err:
        tr.enforce(decision)
    assert str(err.value) == reason


@pytest.mark.parametrize(
    ("rec", "cost", "cap"),
    [
        pytest.param(record(t=999, c=1000), 10**15, None, id="aaa-unlimited"),
        pytest.param(record(c=250), USD, USD, id="bb-exactly-one-dollar"),
        pytest.param(record(c=100), 0, 0, id="d-free-task"),
        pytest.param(record(c=650, age_s=300), 10_000 * USD, 10_000 * USD, id="a-at-cap-max-age"),
    ],
)
def test_allowed(rec: TrustRecord, cost: int, cap: int | None) -> None:
    decision = tr.enforce(decide(TrustPolicy(), rec, cost))
    assert (decision.allow, decision.code, decision.cap_micro) == (True, "ok", cap)
    assert (decision.tier, decision.rating) == (rec.tier, rec.rating)
    assert decision.reason.endswith(": allowed")


def test_allowed_reason_names_scores_and_cap() -> None:
    assert decide(STRICT, record(), 2 * USD).reason == (
        "auid-42: T-Score 700 (T4), C-Score 650 (A, cap $10,000.00); task costs $2.00: allowed"
    )
    assert "(AAA, no cap)" in decide(STRICT, record(c=950), 0).reason


def test_a_record_from_the_future_counts_as_fresh() -> None:
    assert decide(TrustPolicy(), record(age_s=-60), 0).allow


# -- fail-open versus fail-closed -----------------------------------------------------


def test_fail_open_allows_without_a_record() -> None:
    decision = decide(STRICT, None, 10**12, fail_open=True)
    assert decision == Decision(
        True,
        "no trust record (AXIS unreachable and nothing cached); allowed unchecked (fail-open)",
        None,
        None,
        None,
        "fail_open",
    )


def test_fail_open_still_checks_a_stale_record() -> None:
    stale = record(age_s=3600, source="cache")
    allowed = decide(STRICT, stale, USD, fail_open=True)
    assert (allowed.allow, allowed.code) == (True, "fail_open")
    assert allowed.reason.endswith("allowed on a stale record (3600s old, fail-open)")
    denied = decide(STRICT, record(t=100, age_s=3600), 0, fail_open=True)
    assert (denied.allow, denied.code) == (False, "below_min_tier")


def test_fail_closed_is_the_default_and_keeps_what_it_knows() -> None:
    decision = decide(STRICT, record(c=650, age_s=3600), 0)
    assert (decision.allow, decision.code) == (False, "stale_record")
    assert (decision.tier, decision.rating, decision.cap_micro) == (Tier.T4, Rating.A, 10_000 * USD)


@pytest.mark.parametrize(
    ("cost", "now", "max_age_s", "message"),
    [
        pytest.param(-1, NOW, 300, "task cost must be", id="negative-cost"),
        pytest.param(1.0, NOW, 300, "task cost must be", id="float-cost"),
        pytest.param(True, NOW, 300, "task cost must be", id="bool-cost"),
        pytest.param(0, datetime(2026, 3, 1), 300, "timezone-aware", id="naive-now"),
        pytest.param(0, NOW, -1, "max_age_s must be", id="negative-age"),
        pytest.param(0, NOW, float("nan"), "max_age_s must be", id="nan-age"),
        pytest.param(0, NOW, "300", "max_age_s must be", id="str-age"),
        pytest.param(0, NOW, True, "max_age_s must be", id="bool-age"),
    ],
)
def test_decide_validates_its_inputs(
    cost: Any, now: datetime, max_age_s: Any, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        tr.decide(TrustPolicy(), record(), cost, now, max_age_s=max_age_s)


def test_trust_denied_has_a_wire_code() -> None:
    assert TrustDenied.code == "trust_denied"
    assert type(from_wire("trust_denied", "no")) is TrustDenied
    decision = decide(STRICT, record(), 0)
    assert pickle.loads(pickle.dumps(decision)) == decision
