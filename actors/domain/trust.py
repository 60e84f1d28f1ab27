"""The trust gate: AXIS scores, tiers, ratings and the allow/deny decision (pure, stdlib only).

AXIS gives every agent (by AUID) a T-Score (trust, 0-1000) and a C-Score
(credit, 0-1000). The T-Score maps to a tier, the C-Score to a credit rating,
and each rating caps what a single task may cost::

    T-Score   tier                C-Score   rating  default cap per task
    0-199     T1 untrusted        900-1000  AAA     none (unlimited)
    200-399   T2 provisional      750-899   AA      $100,000
    400-599   T3 established      600-749   A       $10,000
    600-799   T4 trusted          400-599   BBB     $1,000
    800-1000  T5 verified         200-399   BB      micro-payments only: at most $1
                                  0-199     D       nothing ($0)

The T3-T5 labels are ours (only T1/T2 are named by AXIS as we know it).
Nothing here talks to AXIS: the shell fetches (or caches) a
:class:`TrustRecord` and hands it to :func:`decide` with the current time.
Money is integer micro-dollars.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from actors.domain.budget import MICRO_PER_USD, format_usd
from naosd.errors import InvalidRequest, TrustDenied

SCORE_MAX: Final = 1000


class Tier(enum.IntEnum):
    T1 = 1
    T2 = 2
    T3 = 3
    T4 = 4
    T5 = 5

    @property
    def label(self) -> str:
        return _TIER_LABELS[self]

    @property
    def floor(self) -> int:
        """The lowest T-Score in this tier."""
        return (self.value - 1) * 200


_TIER_LABELS: Final = {
    Tier.T1: "untrusted",
    Tier.T2: "provisional",
    Tier.T3: "established",
    Tier.T4: "trusted",
    Tier.T5: "verified",
}


class Rating(enum.StrEnum):
    AAA = "AAA"
    AA = "AA"
    A = "A"
    BBB = "BBB"
    BB = "BB"
    D = "D"

    @property
    def floor(self) -> int:
        """The lowest C-Score with this rating."""
        return _RATING_FLOORS[self]

    @property
    def rank(self) -> int:
        """Higher is better: D is 0, AAA is 5."""
        return len(_RATING_FLOORS) - 1 - list(_RATING_FLOORS).index(self)


_RATING_FLOORS: Final = {  # best first
    Rating.AAA: 900,
    Rating.AA: 750,
    Rating.A: 600,
    Rating.BBB: 400,
    Rating.BB: 200,
    Rating.D: 0,
}

MICRO_PAYMENT_MAX: Final = 1 * MICRO_PER_USD  # what "micro-payments only" means: <= $1
DEFAULT_CAPS: Final[Mapping[Rating, int | None]] = {
    Rating.AAA: None,  # unlimited
    Rating.AA: 100_000 * MICRO_PER_USD,
    Rating.A: 10_000 * MICRO_PER_USD,
    Rating.BBB: 1_000 * MICRO_PER_USD,
    Rating.BB: MICRO_PAYMENT_MAX,
    Rating.D: 0,
}


class TrustSource(enum.StrEnum):
    AXIS = "axis"  # fetched from AXIS just now
    LOCAL = "local"  # set by the operator
    CACHE = "cache"  # an earlier AXIS answer


def _check_score(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SCORE_MAX:
        raise InvalidRequest(f"{what} must be a whole number from 0 to {SCORE_MAX}, got {value!r}")
    return value


def tier_of(t_score: int) -> Tier:
    """T1 for 0-199 ... T5 for 800-1000."""
    return Tier(min(_check_score(t_score, "T-Score") // 200, 4) + 1)


def rating_of(c_score: int) -> Rating:
    """AAA for 900-1000 ... D for 0-199."""
    score = _check_score(c_score, "C-Score")
    return next(rating for rating, floor in _RATING_FLOORS.items() if score >= floor)


def _coerce_rating(value: object) -> Rating:
    try:
        return Rating(str(value).upper())
    except ValueError:
        raise InvalidRequest(
            f"invalid rating {value!r}: use one of AAA, AA, A, BBB, BB, D"
        ) from None


def _coerce_tier(value: object) -> Tier:
    names = {tier.name: tier for tier in Tier}
    if isinstance(value, Tier):
        return value
    if isinstance(value, str) and value.upper() in names:
        return names[value.upper()]
    raise InvalidRequest(f"invalid tier {value!r}: use one of T1, T2, T3, T4, T5")


def _check_caps(caps: Mapping[Any, object]) -> dict[Rating, int | None]:
    checked: dict[Rating, int | None] = {}
    for key, cap in caps.items():
        rating = _coerce_rating(key)
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise InvalidRequest(
                f"cap for {rating} must be micro-dollars >= 0 or None (unlimited), got {cap!r}"
            )
        checked[rating] = cap
    return checked


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What an agent needs to be allowed a task.

    ``caps`` holds only the ratings this policy sets explicitly (the others use
    :data:`DEFAULT_CAPS`), so an agent override that leaves caps out does not
    undo a relaxed global cap in :func:`merge`. The defaults let everything through
    except by the caps.
    """

    min_tier: Tier = Tier.T1
    min_t_score: int = 0
    min_rating: Rating = Rating.D
    caps: Mapping[Rating, int | None] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_tier", _coerce_tier(self.min_tier))
        _check_score(self.min_t_score, "min_t_score")
        object.__setattr__(self, "min_rating", _coerce_rating(self.min_rating))
        object.__setattr__(self, "caps", _check_caps(self.caps))

    def cap_for(self, rating: Rating) -> int | None:
        """The per-task cap in micro-dollars for ``rating``; None means unlimited."""
        return self.caps.get(rating, DEFAULT_CAPS[rating])


def merge(base: TrustPolicy, override: TrustPolicy | None) -> TrustPolicy:
    """The stricter of the global policy and an agent's override, field by field."""
    if override is None:
        return base
    caps = {rating: _lower_cap(base, override, rating) for rating in Rating}
    return TrustPolicy(
        min_tier=max(base.min_tier, override.min_tier),
        min_t_score=max(base.min_t_score, override.min_t_score),
        min_rating=max(base.min_rating, override.min_rating, key=lambda r: r.rank),
        caps=caps,
    )


def _lower_cap(base: TrustPolicy, override: TrustPolicy, rating: Rating) -> int | None:
    mine = base.cap_for(rating)
    if rating not in override.caps:
        return mine
    theirs = override.caps[rating]
    if mine is None or theirs is None:
        return theirs if mine is None else mine
    return min(mine, theirs)


@dataclass(frozen=True, slots=True)
class TrustRecord:
    """An agent's AXIS scores as of ``verified_at`` (timezone-aware)."""

    auid: str
    t_score: int
    c_score: int
    verified_at: datetime
    source: TrustSource = TrustSource.AXIS

    def __post_init__(self) -> None:
        if not self.auid:
            raise InvalidRequest(f"auid must be a non-empty string, got {self.auid!r}")
        _check_score(self.t_score, "T-Score")
        _check_score(self.c_score, "C-Score")
        if self.verified_at.utcoffset() is None:
            raise InvalidRequest(f"verified_at must be timezone-aware, got {self.verified_at!r}")
        try:
            object.__setattr__(self, "source", TrustSource(self.source))
        except ValueError:
            raise InvalidRequest(
                f"invalid trust source {self.source!r}: use axis, local or cache"
            ) from None

    @property
    def tier(self) -> Tier:
        return tier_of(self.t_score)

    @property
    def rating(self) -> Rating:
        return rating_of(self.c_score)


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's verdict. ``code`` is a stable machine tag for ``reason``:
    ok, fail_open, no_record, stale_record, below_min_tier, below_min_t_score,
    below_min_rating, over_cap."""

    allow: bool
    reason: str
    tier: Tier | None
    rating: Rating | None
    cap_micro: int | None  # None: unlimited, or unknown (no record)
    code: str = "ok"


def decide(
    policy: TrustPolicy,
    record: TrustRecord | None,
    task_cost_micro: int,
    now: datetime,
    *,
    max_age_s: float,
    fail_open: bool = False,
) -> Decision:
    """Allow or deny a task costing ``task_cost_micro`` for the agent ``record`` describes.

    A missing record, or one older than ``max_age_s`` (AXIS unreachable and no
    fresh cache), denies unless ``fail_open``. With ``fail_open`` a stale record
    is still checked against the policy; a missing one is allowed unchecked.

    Raises:
        InvalidRequest: a negative or non-integer cost, or a bad ``max_age_s``.
    """
    _check_inputs(task_cost_micro, now, max_age_s)
    if record is None:
        return _no_record(fail_open)
    age_s = (now - record.verified_at).total_seconds()
    stale = age_s > max_age_s
    if stale and not fail_open:
        return _stale(policy, record, age_s, max_age_s)
    denial = _check_policy(policy, record, task_cost_micro)
    if denial is not None:
        return denial
    return _allowed(policy, record, task_cost_micro, age_s if stale else None)


def enforce(decision: Decision) -> Decision:
    """Return ``decision`` if it allows, else raise TrustDenied with its reason."""
    if not decision.allow:
        raise TrustDenied(decision.reason)
    return decision


def _check_inputs(cost: object, now: datetime, max_age_s: object) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise InvalidRequest(f"task cost must be micro-dollars >= 0, got {cost!r}")
    if now.utcoffset() is None:
        raise InvalidRequest(f"now must be a timezone-aware datetime, got {now!r}")
    if not _seconds(max_age_s):
        raise InvalidRequest(f"max_age_s must be a number of seconds >= 0, got {max_age_s!r}")


def _seconds(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return not math.isnan(value) and value >= 0


def _no_record(fail_open: bool) -> Decision:
    why = "no trust record (AXIS unreachable and nothing cached)"
    if fail_open:
        return Decision(
            True, f"{why}; allowed unchecked (fail-open)", None, None, None, "fail_open"
        )
    return Decision(False, f"{why}; denied (fail-closed)", None, None, None, "no_record")


def _stale(policy: TrustPolicy, record: TrustRecord, age_s: float, max_age_s: float) -> Decision:
    reason = (
        f"{record.auid}: trust record from {record.source} is {age_s:.0f}s old "
        f"(max {max_age_s:g}s) and AXIS gave nothing fresher; denied (fail-closed)"
    )
    rating = record.rating
    return Decision(False, reason, record.tier, rating, policy.cap_for(rating), "stale_record")


def _check_policy(policy: TrustPolicy, record: TrustRecord, cost: int) -> Decision | None:
    tier, rating = record.tier, record.rating
    cap = policy.cap_for(rating)

    def deny(code: str, reason: str) -> Decision:
        return Decision(False, f"{record.auid}: {reason}", tier, rating, cap, code)

    if tier < policy.min_tier:
        return deny(
            "below_min_tier",
            f"T-Score {record.t_score} is tier {tier.name} ({tier.label}); policy requires "
            f"{policy.min_tier.name} ({policy.min_tier.label}, T-Score {policy.min_tier.floor}+)",
        )
    if record.t_score < policy.min_t_score:
        return deny(
            "below_min_t_score",
            f"T-Score {record.t_score} is below the required {policy.min_t_score}",
        )
    if rating.rank < policy.min_rating.rank:
        return deny(
            "below_min_rating",
            f"C-Score {record.c_score} rates {rating}; policy requires {policy.min_rating} "
            f"(C-Score {policy.min_rating.floor}+)",
        )
    if cap is not None and cost > cap:
        return deny(
            "over_cap",
            f"task costs {format_usd(cost)}, over the {format_usd(cap)} per-task cap "
            f"for rating {rating} (C-Score {record.c_score})",
        )
    return None


def _allowed(
    policy: TrustPolicy, record: TrustRecord, cost: int, stale_s: float | None
) -> Decision:
    tier, rating = record.tier, record.rating
    cap = policy.cap_for(rating)
    limit = "no cap" if cap is None else f"cap {format_usd(cap)}"
    reason = (
        f"{record.auid}: T-Score {record.t_score} ({tier.name}), C-Score {record.c_score} "
        f"({rating}, {limit}); task costs {format_usd(cost)}: allowed"
    )
    if stale_s is None:
        return Decision(True, reason, tier, rating, cap)
    reason += f" on a stale record ({stale_s:.0f}s old, fail-open)"
    return Decision(True, reason, tier, rating, cap, "fail_open")
