"""Route scoring: pick the cheapest handler that can do a task (pure, stdlib only).

Handlers are skills (``skill``: in-process code; ``wasm``: a sandboxed module),
each with a price, and an optional LLM fallback with an estimated price. A skill
scores a task with :func:`match`; it is *capable* when the score clears its
kind's threshold. :func:`route` picks the cheapest capable skill, and the LLM
only when no skill clears. Nothing here runs a handler or calls a model.

The confidence formula of :func:`match` combines three signals, each in [0, 1],
with a noisy-OR, so any one strong signal is enough and each extra one adds less::

    K = sqrt(keywords found / keywords)        # 0 without keywords; concave: the
                                                # first hits count most
    R = 1 if any regex matches else 0           # the strong signal
    E = max Jaccard(words(task), words(example)) over the examples (0 without)
    confidence = 1 - (1 - 0.8 K) (1 - 0.9 R) (1 - 0.8 E)

Keywords match whole words case-insensitively (a keyword may be a phrase);
regexes are searched case-insensitively; words are lowercase runs of letters
and digits. One keyword in two found scores 0.57, a regex alone 0.9.

Money is integer micro-dollars.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from actors.domain.budget import format_usd
from naosd.errors import InvalidRequest, NoRoute

W_KEYWORDS: Final = 0.8
W_REGEX: Final = 0.9
W_EXAMPLES: Final = 0.8
NEAR_MISS: Final = 0.1  # a skill this close below its threshold is flagged in explain()
CHARS_PER_TOKEN: Final = 4
LLM_NAME: Final = "llm"
_WORD: Final = re.compile(r"[^\W_]+")
_LLM_FIELDS: Final = (
    "price_in_per_1k_micro",
    "price_out_per_1k_micro",
    "est_in_tokens",
    "est_out_tokens",
)


class RouteKind(enum.StrEnum):
    SKILL = "skill"
    WASM = "wasm"
    LLM = "llm"


_KINDS: Final = frozenset(kind.value for kind in RouteKind)


def _check_micro(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def _strings(values: Iterable[object], what: str, skill: str) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequest(
                f"skill {skill!r}: {what} must be non-empty strings, got {value!r}"
            )
        out.append(value)
    return tuple(out)


def _check_regex(pattern: str, skill: str) -> None:
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InvalidRequest(f"skill {skill!r}: bad regex {pattern!r}: {exc}") from exc
    if compiled.search("") is not None:
        raise InvalidRequest(
            f"skill {skill!r}: regex {pattern!r} matches the empty string, so it matches every task"
        )


@dataclass(frozen=True, slots=True)
class Skill:
    """A handler that is not the LLM: its match signals and its price per task."""

    name: str
    kind: RouteKind
    keywords: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    price_micro: int = 0

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidRequest(f"skill name must be a non-empty string, got {self.name!r}")
        if self.kind not in (RouteKind.SKILL, RouteKind.WASM):
            raise InvalidRequest(
                f"skill {self.name!r}: kind must be skill or wasm, not {self.kind!r}"
            )
        object.__setattr__(self, "kind", RouteKind(self.kind))
        for attr in ("keywords", "regexes", "examples"):
            object.__setattr__(self, attr, _strings(getattr(self, attr), attr, self.name))
        for pattern in self.regexes:
            _check_regex(pattern, self.name)
        _check_micro(self.price_micro, f"skill {self.name!r}: price_micro")


def words(text: str) -> frozenset[str]:
    """The lowercase words (runs of letters and digits) of ``text``."""
    return frozenset(_WORD.findall(text.lower()))


def _keyword_found(keyword: str, task: str) -> bool:
    pattern = r"(?<![^\W_])" + re.escape(keyword.strip().lower()) + r"(?![^\W_])"
    return re.search(pattern, task) is not None


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def match(skill: Skill, task: str) -> float:
    """How confident we are that ``skill`` handles ``task``, in [0, 1] (formula above)."""
    lowered = task.lower()
    k = 0.0
    if skill.keywords:
        hits = sum(_keyword_found(keyword, lowered) for keyword in skill.keywords)
        k = math.sqrt(hits / len(skill.keywords))
    r = 1.0 if any(re.search(p, task, re.IGNORECASE) for p in skill.regexes) else 0.0
    task_words = words(task)
    e = max((_jaccard(task_words, words(ex)) for ex in skill.examples), default=0.0)
    miss = (1 - W_KEYWORDS * k) * (1 - W_REGEX * r) * (1 - W_EXAMPLES * e)
    return min(1.0, max(0.0, 1.0 - miss))


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The confidence a skill of each kind needs to be considered capable."""

    skill: float = 0.5
    wasm: float = 0.5

    def __post_init__(self) -> None:
        for kind in ("skill", "wasm"):
            value = getattr(self, kind)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise InvalidRequest(
                    f"{kind} threshold must be a number from 0 to 1, got {value!r}"
                )

    def for_kind(self, kind: RouteKind) -> float:
        return self.wasm if kind is RouteKind.WASM else self.skill


def estimate_tokens(text: str) -> int:
    """About four characters per token, at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


@dataclass(frozen=True, slots=True)
class LlmRoute:
    """The LLM fallback: prices per 1,000 tokens and token estimates for *this* task
    (build ``est_in_tokens`` from the prompt overhead plus ``estimate_tokens(task)``)."""

    price_in_per_1k_micro: int
    price_out_per_1k_micro: int
    est_in_tokens: int
    est_out_tokens: int

    def __post_init__(self) -> None:
        for attr in _LLM_FIELDS:
            _check_micro(getattr(self, attr), attr)

    @property
    def cost_micro(self) -> int:
        """The estimated cost, each side rounded up to a whole micro-dollar."""
        cost_in = -(-self.est_in_tokens * self.price_in_per_1k_micro // 1000)
        cost_out = -(-self.est_out_tokens * self.price_out_per_1k_micro // 1000)
        return cost_in + cost_out


@dataclass(frozen=True, slots=True)
class Candidate:
    """One handler as scored for one task (the LLM scores 1.0 against threshold 0)."""

    name: str
    kind: RouteKind
    price_micro: int
    confidence: float
    threshold: float

    @property
    def cleared(self) -> bool:
        return self.confidence >= self.threshold

    @property
    def near_miss(self) -> bool:
        """Below its threshold by at most NEAR_MISS."""
        return not self.cleared and self.confidence >= self.threshold - NEAR_MISS

    def describe(self) -> str:
        if self.kind is RouteKind.LLM:
            return f"{self.name} (llm fallback, est. {format_usd(self.price_micro)})"
        sign = ">=" if self.cleared else "<"
        return (
            f"{self.name} ({self.kind}, {format_usd(self.price_micro)}, "
            f"confidence {self.confidence:.2f} {sign} {self.threshold:.2f})"
        )

    def sort_key(self) -> tuple[bool, bool, int, float, str]:
        """Capable first, the LLM after every capable skill, then cheapest, surest, by name."""
        return (
            not self.cleared,
            self.kind is RouteKind.LLM,
            self.price_micro,
            -self.confidence,
            self.name,
        )


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The winner (None only inside a NoRoute error), every candidate in order, and why."""

    chosen: Candidate | None
    candidates: tuple[Candidate, ...]
    reason: str

    def explain(self) -> str:
        """One line for the decision, then one per candidate, near misses flagged."""
        lines = [self.reason]
        for cand in self.candidates:
            mark = "*" if cand == self.chosen else " "
            flag = ""
            if cand.near_miss:
                flag = f"  <- near miss, {cand.threshold - cand.confidence:.2f} short"
            lines.append(f" {mark} {cand.describe()}{flag}")
        return "\n".join(lines)

    @property
    def near_misses(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.near_miss)


def route(
    task: str,
    skills: Sequence[Skill],
    thresholds: Thresholds | None = None,
    llm: LlmRoute | None = None,
) -> RouteDecision:
    """Score every skill for ``task`` and choose the cheapest capable handler.

    Ties in price go to the higher confidence, then to the name. The LLM (when
    configured) is the fallback: chosen only when no skill clears.

    Raises:
        NoRoute: no skill clears its threshold and ``llm`` is None.
        InvalidRequest: two skills share a name, or one is named "llm".
    """
    thresholds = thresholds or Thresholds()
    _check_names(skills)
    scored = [
        Candidate(s.name, s.kind, s.price_micro, match(s, task), thresholds.for_kind(s.kind))
        for s in skills
    ]
    if llm is not None:
        scored.append(Candidate(LLM_NAME, RouteKind.LLM, llm.cost_micro, 1.0, 0.0))
    candidates = tuple(sorted(scored, key=Candidate.sort_key))
    best = candidates[0] if candidates and candidates[0].cleared else None
    if best is None:
        message = f"no route for task {_excerpt(task)}: {_why_none(candidates)}"
        raise NoRoute(message, RouteDecision(None, candidates, message))
    return RouteDecision(best, candidates, _why(best, candidates))


def parse_pin(text: str) -> tuple[RouteKind, str]:
    """``"wasm:ticket-fields"`` -> (WASM, "ticket-fields"); ``"llm"`` -> (LLM, "llm").

    Raises:
        InvalidRequest: not ``KIND:NAME`` with a known kind (or ``llm``).
    """
    if text == LLM_NAME:
        return RouteKind.LLM, LLM_NAME
    kind, sep, name = text.partition(":")
    if not sep or kind not in _KINDS or kind == RouteKind.LLM or not name:
        raise InvalidRequest(
            f"route {text!r}: expected skill:NAME, wasm:NAME or llm")
    return RouteKind(kind), name


def pinned(
    task: str, pin: str, skills: Sequence[Skill], llm: LlmRoute | None = None
) -> RouteDecision:
    """The route the caller named, whatever the task's text says (user text
    cannot hijack a pinned route).  The pinned handler is chosen even below
    its threshold: the caller decided, not the scores.

    Raises:
        InvalidRequest: a malformed pin.
        NoRoute: no such skill of that kind, or the LLM is pinned but none is configured.
    """
    kind, name = parse_pin(pin)
    if kind is RouteKind.LLM:
        if llm is None:
            raise NoRoute(f"route {pin!r} is pinned but no LLM is configured")
        chosen = Candidate(LLM_NAME, RouteKind.LLM, llm.cost_micro, 1.0, 0.0)
        return RouteDecision(chosen, (chosen,), f"pinned to {chosen.describe()}")
    for skill in skills:
        if skill.name == name and skill.kind is kind:
            chosen = Candidate(skill.name, kind, skill.price_micro, match(skill, task), 0.0)
            return RouteDecision(chosen, (chosen,), f"pinned to {chosen.describe()}")
    raise NoRoute(f"route {pin!r} is pinned but there is no {kind.value} skill named {name!r}")


def _check_names(skills: Sequence[Skill]) -> None:
    seen: set[str] = set()
    for skill in skills:
        if skill.name in seen or skill.name == LLM_NAME:
            what = "is reserved for the LLM" if skill.name == LLM_NAME else "is used twice"
            raise InvalidRequest(f"skill name {skill.name!r} {what}")
        seen.add(skill.name)


def _excerpt(task: str, limit: int = 60) -> str:
    return repr(task if len(task) <= limit else task[: limit - 1] + "…")


def _why(best: Candidate, candidates: tuple[Candidate, ...]) -> str:
    if best.kind is not RouteKind.LLM:
        return f"chose {best.describe()}: the cheapest handler that clears its threshold"
    misses = [c for c in candidates if c.near_miss]
    tail = f"; near miss: {misses[0].describe()}" if misses else ""
    return f"chose {best.describe()}: no skill clears its threshold{tail}"


def _why_none(candidates: tuple[Candidate, ...]) -> str:
    if not candidates:
        return "no skills are registered and no LLM is configured"
    misses = [c for c in candidates if c.near_miss]
    best = min(misses or candidates, key=lambda c: (c.threshold - c.confidence, c.name))
    what = "best near miss" if misses else "closest (not a near miss)"
    return f"no skill clears its threshold and no LLM is configured; {what}: {best.describe()}"


def savings(records: Iterable[tuple[str, int, int]]) -> tuple[int, int, int]:
    """Totals of ``(route_kind, actual_cost_micro, llm_estimate_micro)`` records:
    (what was spent, what sending everything to the LLM would have cost, the difference).

    A task the LLM handled counts at its actual cost on both sides.
    """
    actual = all_llm = 0
    for kind, cost, estimate in records:
        _check_micro(cost, "actual_cost_micro")
        _check_micro(estimate, "llm_estimate_micro")
        if kind not in _KINDS:
            raise InvalidRequest(f"unknown route kind {kind!r}: use skill, wasm or llm")
        actual += cost
        all_llm += cost if kind == RouteKind.LLM else estimate
    return actual, all_llm, all_llm - actual
