"""Route scoring (actors/domain/routing.py): match, route, explain, savings."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.domain import routing as rt
from actors.domain.routing import (
    Candidate,
    LlmRoute,
    NoRoute,
    RouteDecision,
    RouteKind,
    Skill,
    Thresholds,
)
from naosd.errors import InvalidRequest, from_wire

SKILL, WASM, LLM = RouteKind.SKILL, RouteKind.WASM, RouteKind.LLM

CSV_TOTAL = Skill(
    "csv-total",
    SKILL,
    keywords=("total", "sum", "invoices", "add up"),
    regexes=(r"\b[a-z]\w*\s*=\s*\d+(?:\.\d+)?",),
    examples=("total these invoices", "sum the amounts in this csv"),
)
WEATHER = Skill(
    "weather",
    WASM,
    keywords=("weather", "forecast", "temperature"),
    examples=("what is the weather in paris", "forecast for tomorrow"),
    price_micro=2_000,
)
UUID = Skill("uuid", SKILL, regexes=(r"\b(?:uuid|guid)s?\b",))
TRANSLATE = Skill(
    "translate",
    WASM,
    keywords=("translate", "french", "german", "spanish"),
    examples=("translate this sentence to french",),
    price_micro=5_000,
)
JSON_FMT = Skill(
    "json-format",
    SKILL,
    keywords=("json", "pretty print", "format"),
    regexes=(r"^\s*[{\[]",),
)
DATE_DIFF = Skill(
    "date-diff",
    WASM,
    keywords=("days between", "days until", "date"),
    regexes=(r"\d{4}-\d{2}-\d{2}",),
    price_micro=500,
)
UNITS_CHEAP = Skill("units-lite", WASM, keywords=("convert", "km", "miles"), price_micro=100)
UNITS_RICH = Skill(
    "units-pro", WASM, keywords=("convert", "km", "miles", "celsius"), price_micro=900
)
SKILLS = (CSV_TOTAL, WEATHER, UUID, TRANSLATE, JSON_FMT, DATE_DIFF, UNITS_CHEAP, UNITS_RICH)
GPT = LlmRoute(
    price_in_per_1k_micro=3_000,
    price_out_per_1k_micro=15_000,
    est_in_tokens=200,
    est_out_tokens=400,
)


# -- the routing table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "llm", "chosen"),
    [
        pytest.param("total these invoices: a=12.50, b=3", GPT, "csv-total", id="csv-total"),
        pytest.param("Please add up x = 4 and y = 5", GPT, "csv-total", id="csv-assignments"),
        pytest.param("summarize this article", GPT, "llm", id="summarize-llm"),
        pytest.param("what is the weather in Paris?", GPT, "weather", id="weather"),
        pytest.param("Give me 3 UUIDs", None, "uuid", id="uuid-regex-only"),
        pytest.param('{"a": 1, "b": [2, 3]}', GPT, "json-format", id="json-by-shape"),
        pytest.param(
            "how many days between 2024-01-01 and 2024-03-01", GPT, "date-diff", id="date"
        ),
        pytest.param("translate this sentence to French", GPT, "translate", id="translate"),
        pytest.param("convert 5 km to miles", GPT, "units-lite", id="cheapest-capable-wins"),
        pytest.param("what is 20 celsius", GPT, "llm", id="one-keyword-in-four"),
        pytest.param("write a haiku about autumn", GPT, "llm", id="haiku-llm"),
        pytest.param("TOTAL the INVOICES: q=1", None, "csv-total", id="case-insensitive"),
        pytest.param("weather forecast temperature", None, "weather", id="all-keywords"),
        pytest.param("", GPT, "llm", id="empty-task"),
    ],
)
def test_routing_table(task: str, llm: LlmRoute | None, chosen: str) -> None:
    decision = rt.route(task, SKILLS, Thresholds(), llm)
    assert decision.chosen is not None
    assert decision.chosen.name == chosen, decision.explain()
    assert decision.candidates[0] == decision.chosen
    assert len(decision.candidates) == len(SKILLS) + (llm is not None)


def test_gibberish_without_an_llm_is_no_route() -> None:
    with pytest.raises(NoRoute) as err:
        rt.route("xqzzt blorp fnord", SKILLS, Thresholds(), None)
    assert str(err.value) == (
        "no route for task 'xqzzt blorp fnord': no skill clears its threshold and no LLM is "
        "configured; closest (not a near miss): csv-total (skill, $0.00, confidence 0.00 < 0.50)"
    )
    decision = err.value.decision
    assert decision is not None and decision.chosen is None
    assert decision.reason == str(err.value)


def test_no_route_names_the_best_near_miss() -> None:
    task = "temperature, now!"
    with pytest.raises(
        NoRoute, match=r"best near miss: weather \(wasm, \$0.002, confidence 0.46 <"
    ):
        rt.route(task, SKILLS, Thresholds(), None)


def test_no_skills_and_no_llm() -> None:
    with pytest.raises(NoRoute, match="no skills are registered and no LLM is configured"):
        rt.route("anything", (), Thresholds(), None)


def test_no_skills_with_an_llm_goes_to_the_llm() -> None:
    decision = rt.route("anything", (), None, GPT)
    assert decision.chosen == Candidate("llm", LLM, GPT.cost_micro, 1.0, 0.0)
    assert (
        decision.reason == "chose llm (llm fallback, est. $0.0066): no skill clears its threshold"
    )


def test_the_llm_is_a_fallback_even_when_cheaper() -> None:
    pricey = Skill("pricey", SKILL, keywords=("total",), price_micro=10**9)
    decision = rt.route("total", (pricey,), Thresholds(), LlmRoute(1, 1, 1, 1))
    assert [c.name for c in decision.candidates] == ["pricey", "llm"]
    assert decision.chosen is not None and decision.chosen.name == "pricey"


# -- ordering and ties ----------------------------------------------------------------


def test_price_ties_go_to_confidence_then_name() -> None:
    strong = Skill("zeta", SKILL, keywords=("alpha", "beta"))
    weak = Skill("omega", SKILL, keywords=("alpha", "gamma", "delta"))
    twin = Skill("eta", SKILL, keywords=("alpha", "beta"))
    decision = rt.route("alpha beta", (weak, strong, twin), Thresholds(), None)
    assert [c.name for c in decision.candidates] == ["eta", "zeta", "omega"]


def test_candidates_sort_cleared_then_price_then_confidence() -> None:
    decision = rt.route("convert 5 km to miles, uuid", SKILLS, Thresholds(), GPT)
    names = [c.name for c in decision.candidates]
    assert names[:4] == ["uuid", "units-lite", "units-pro", "llm"]
    rest = decision.candidates[4:]
    assert all(not c.cleared for c in rest)
    assert [c.price_micro for c in rest] == sorted(c.price_micro for c in rest)


def test_thresholds_apply_per_kind() -> None:
    strict_wasm = Thresholds(skill=0.5, wasm=0.99)
    decision = rt.route("what is the weather in paris", SKILLS, strict_wasm, GPT)
    assert decision.chosen is not None and decision.chosen.kind is LLM
    assert strict_wasm.for_kind(WASM) == 0.99 and strict_wasm.for_kind(SKILL) == 0.5


# -- explain --------------------------------------------------------------------------


def test_explain_marks_the_winner_and_flags_near_misses() -> None:
    task = "sum it"  # csv-total: one keyword in four plus a weak example: a near miss
    decision = rt.route(task, (CSV_TOTAL, WEATHER), Thresholds(), GPT)
    assert decision.near_misses == (decision.candidates[1],)
    assert decision.explain().splitlines() == [
        "chose llm (llm fallback, est. $0.0066): no skill clears its threshold; "
        "near miss: csv-total (skill, $0.00, confidence 0.47 < 0.50)",
        " * llm (llm fallback, est. $0.0066)",
        "   csv-total (skill, $0.00, confidence 0.47 < 0.50)  <- near miss, 0.03 short",
        "   weather (wasm, $0.002, confidence 0.00 < 0.50)",
    ]


def test_explain_of_a_skill_win() -> None:
    decision = rt.route("give me a uuid", (UUID,), Thresholds(), None)
    assert decision.explain() == (
        "chose uuid (skill, $0.00, confidence 0.90 >= 0.50): "
        "the cheapest handler that clears its threshold\n"
        " * uuid (skill, $0.00, confidence 0.90 >= 0.50)"
    )


@pytest.mark.parametrize(
    ("confidence", "cleared", "near"),
    [
        pytest.param(0.5, True, False, id="at-threshold"),
        pytest.param(0.45, False, True, id="just-below"),
        pytest.param(0.4, False, True, id="edge-of-near"),
        pytest.param(0.39, False, False, id="too-far"),
    ],
)
def test_near_miss_window(confidence: float, cleared: bool, near: bool) -> None:
    cand = Candidate("s", SKILL, 0, confidence, 0.5)
    assert (cand.cleared, cand.near_miss) == (cleared, near)


# -- match ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("skill", "task", "expected"),
    [
        pytest.param(UUID, "uuid please", 0.9, id="regex-alone"),
        pytest.param(UUID, "UUID please", 0.9, id="regex-ignores-case"),
        pytest.param(
            Skill("k", SKILL, keywords=("a", "b")), "a", 0.8 * math.sqrt(0.5), id="1-of-2"
        ),
        pytest.param(Skill("k", SKILL, keywords=("a", "b")), "b a", 0.8, id="2-of-2"),
        pytest.param(Skill("k", SKILL, keywords=("total",)), "totals", 0.0, id="whole-words"),
        pytest.param(Skill("k", SKILL, keywords=("add up",)), "Add Up these", 0.8, id="phrase"),
        pytest.param(Skill("k", SKILL, keywords=("c++",)), "in c++ please", 0.8, id="symbols"),
        pytest.param(
            Skill("k", SKILL, keywords=("total",)), "sub_total", 0.8, id="underscore-splits"
        ),
        pytest.param(Skill("k", SKILL, examples=("a b",)), "a b", 0.8, id="example-exact"),
        pytest.param(
            Skill("k", SKILL, examples=("a b c", "x")), "a b", 0.8 * 2 / 3, id="example-best"
        ),
        pytest.param(Skill("k", SKILL, examples=("a",)), "?!", 0.0, id="no-words"),
        pytest.param(Skill("k", SKILL), "anything", 0.0, id="no-signals"),
        pytest.param(
            Skill("k", SKILL, keywords=("a",), regexes=("a",), examples=("a",)),
            "a",
            1 - 0.2 * 0.1 * 0.2,
            id="all-three",
        ),
    ],
)
def test_match(skill: Skill, task: str, expected: float) -> None:
    assert rt.match(skill, task) == pytest.approx(expected)


_TEXT = st.text(st.characters(codec="utf-8"), max_size=80)
_PATTERNS = st.sampled_from([r"\d+", r"[a-z]+", r"^x", r"foo|bar", r"\bwhy\b", r"é+"])


@settings(max_examples=300, deadline=None)
@given(
    keywords=st.lists(_TEXT.filter(str.strip), max_size=5),
    regexes=st.lists(_PATTERNS, max_size=3),
    examples=st.lists(_TEXT.filter(str.strip), max_size=4),
    task=_TEXT,
)
def test_match_is_always_between_0_and_1(
    keywords: list[str], regexes: list[str], examples: list[str], task: str
) -> None:
    skill = Skill("s", SKILL, tuple(keywords), tuple(regexes), tuple(examples))
    assert 0.0 <= rt.match(skill, task) <= 1.0


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"name": " "}, "skill name must be", id="blank-name"),
        pytest.param({"kind": "llm"}, "kind must be skill or wasm", id="kind-llm"),
        pytest.param({"kind": "python"}, "kind must be skill or wasm", id="kind-unknown"),
        pytest.param({"keywords": ("ok", "")}, "keywords must be non-empty", id="empty-keyword"),
        pytest.param({"examples": (3,)}, "examples must be non-empty", id="non-str-example"),
        pytest.param({"regexes": ("(",)}, "bad regex '\\('", id="bad-regex"),
        pytest.param({"regexes": (r"\d*",)}, "matches the empty string", id="empty-regex"),
        pytest.param({"price_micro": -1}, "price_micro must be", id="negative-price"),
        pytest.param({"price_micro": 0.5}, "price_micro must be", id="float-price"),
    ],
)
def test_skill_validation(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"name": "s", "kind": "skill"} | kwargs
    with pytest.raises(InvalidRequest, match=message):
        Skill(**args)


def test_skill_coerces_kind_and_lists() -> None:
    skill = Skill("s", "wasm", ["a"], ["b"], ["c d"])  # type: ignore[arg-type]
    assert (skill.kind, skill.keywords, skill.regexes, skill.examples) == (
        WASM,
        ("a",),
        ("b",),
        ("c d",),
    )
    assert pickle.loads(pickle.dumps(skill)) == skill


@pytest.mark.parametrize(
    ("skills", "message"),
    [
        pytest.param((UUID, UUID), "'uuid' is used twice", id="duplicate"),
        pytest.param((Skill("llm", SKILL),), "'llm' is reserved for the LLM", id="reserved"),
    ],
)
def test_route_rejects_bad_skill_sets(skills: tuple[Skill, ...], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        rt.route("x", skills, Thresholds(), GPT)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"skill": 1.5}, id="over-1"),
        pytest.param({"wasm": -0.1}, id="negative"),
        pytest.param({"skill": float("nan")}, id="nan"),
        pytest.param({"wasm": True}, id="bool"),
        pytest.param({"skill": "0.5"}, id="str"),
    ],
)
def test_threshold_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest, match="threshold must be a number from 0 to 1"):
        Thresholds(**kwargs)


# -- costs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        pytest.param("", 1, id="empty"),
        pytest.param("abc", 1, id="short"),
        pytest.param("abcd", 1, id="four"),
        pytest.param("abcde", 2, id="five"),
        pytest.param("x" * 400, 100, id="long"),
    ],
)
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert rt.estimate_tokens(text) == tokens


@pytest.mark.parametrize(
    ("llm", "cost"),
    [
        pytest.param(GPT, 600 + 6_000, id="exact"),
        pytest.param(LlmRoute(1, 1, 1, 1), 2, id="rounds-each-side-up"),
        pytest.param(LlmRoute(1_000, 0, 1, 10**6), 1, id="free-output"),
        pytest.param(LlmRoute(0, 0, 0, 0), 0, id="free"),
    ],
)
def test_llm_cost_estimate(llm: LlmRoute, cost: int) -> None:
    assert llm.cost_micro == cost


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("price_in_per_1k_micro", -1, id="negative-price"),
        pytest.param("est_out_tokens", 1.5, id="float-tokens"),
        pytest.param("est_in_tokens", None, id="none"),
    ],
)
def test_llm_route_validation(field: str, value: Any) -> None:
    args: dict[str, Any] = dict.fromkeys(rt._LLM_FIELDS, 1) | {field: value}
    with pytest.raises(InvalidRequest, match=f"{field} must be a whole number >= 0"):
        LlmRoute(**args)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([], (0, 0, 0), id="none"),
        pytest.param(
            [("skill", 0, 6_600), ("wasm", 2_000, 6_600), ("llm", 7_100, 6_600)],
            (9_100, 20_300, 11_200),
            id="mixed",
        ),
        pytest.param([("wasm", 9_000, 1_000)], (9_000, 1_000, -8_000), id="skill-cost-more"),
        pytest.param([(RouteKind.LLM, 5, 0)], (5, 5, 0), id="llm-counts-actual"),
    ],
)
def test_savings(records: list[tuple[str, int, int]], expected: tuple[int, int, int]) -> None:
    assert rt.savings(records) == expected


@pytest.mark.parametrize(
    ("record", "message"),
    [
        pytest.param(("gpu", 1, 1), "unknown route kind 'gpu'", id="kind"),
        pytest.param(("skill", -1, 1), "actual_cost_micro", id="negative-actual"),
        pytest.param(("skill", 1, 0.5), "llm_estimate_micro", id="float-estimate"),
    ],
)
def test_savings_validation(record: tuple[str, int, int], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        rt.savings([record])


# -- errors ---------------------------------------------------------------------------


def test_no_route_has_a_wire_code_and_pickles() -> None:
    assert NoRoute.code == "no_route"
    rebuilt = from_wire("no_route", "nothing fits")
    assert type(rebuilt) is NoRoute and rebuilt.decision is None
    decision = RouteDecision(None, (Candidate("s", SKILL, 0, 0.1, 0.5),), "why")
    assert pickle.loads(pickle.dumps(decision)) == decision
    err = pickle.loads(pickle.dumps(NoRoute("gone", decision)))
    assert str(err) == "gone"


def test_long_tasks_are_shortened_in_messages() -> None:
    with pytest.raises(NoRoute, match=r"no route for task 'yyyy+…':"):
        rt.route("y" * 200, (UUID,), Thresholds(), None)


# -- pinned routes: the caller names the handler, the task's text cannot move it -----


def _pin_catalog() -> list[rt.Skill]:
    return [rt.Skill("sha256", rt.RouteKind.SKILL, keywords=("sha256",)),
            rt.Skill("ticket-fields", rt.RouteKind.WASM, keywords=("fields",),
                          price_micro=5)]


def test_a_pinned_route_ignores_text_that_would_route_elsewhere() -> None:
    decision = rt.pinned("sha256 of hello", "wasm:ticket-fields", _pin_catalog())
    assert decision.chosen is not None
    assert (decision.chosen.name, decision.chosen.kind) == ("ticket-fields",
                                                            rt.RouteKind.WASM)
    assert decision.chosen.cleared  # the caller decided, not the score


def test_a_pin_naming_nothing_or_the_wrong_kind_is_no_route() -> None:
    with pytest.raises(rt.NoRoute, match="no wasm skill named 'sha256'"):
        rt.pinned("x", "wasm:sha256", _pin_catalog())
    with pytest.raises(rt.NoRoute, match="no LLM"):
        rt.pinned("x", "llm", _pin_catalog())


@pytest.mark.parametrize("pin", ["", "wasm", "wasm:", "gpu:x", "llm:x", ":x"])
def test_a_malformed_pin_is_an_invalid_request(pin: str) -> None:
    with pytest.raises(InvalidRequest, match="expected skill:NAME"):
        rt.pinned("x", pin, _pin_catalog())


def test_the_llm_can_be_pinned_when_configured() -> None:
    llm = rt.LlmRoute(150, 600, 10, 10)
    decision = rt.pinned("sha256 of hello", "llm", _pin_catalog(), llm)
    assert decision.chosen is not None and decision.chosen.kind is rt.RouteKind.LLM
