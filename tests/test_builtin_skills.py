"""The built-in skills and the routing table over the shipped catalog (pure)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from actors.domain.routing import NoRoute, RouteKind, Thresholds, route
from actors.domain.skill_manifest import parse_manifest
from naosd.broker.builtin_skills import (
    BUILTIN,
    SkillFailed,
    count_words,
    extract_json,
    sha256_of,
    total_numbers,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "skills" / "csv-total"
CATALOG = [b.skill for b in BUILTIN] + [parse_manifest((EXAMPLE / "manifest.json").read_bytes()
                                                       ).skill()]

# task -> the handler that must win (None: no route without an LLM)
ROUTES = [
    ("total these invoices: 12.50, 30, 7.25", "number-total"),
    ("Sum 3, 4 and 5", "number-total"),
    ("please add up these amounts: $1,200.50 and $99.50", "number-total"),
    ("csv total: 12,30,-7", "csv-total"),  # cheaper than number-total, both clear
    ("sum this csv: 1,2,3", "csv-total"),
    ("count the words in: the quick brown fox", "word-count"),
    ("how many words are in this sentence", "word-count"),
    ('extract user.name from {"user": {"name": "ada"}}', "json-extract"),
    ("sha256 of: hello", "sha256"),
    ("SHA-256 this text: abc", "sha256"),
    ("write me a poem about the sea", None),
    ("what is the total?", None),  # a near miss for number-total
    ("translate 'bonjour' to English", None),
]


@pytest.mark.parametrize(("task", "winner"), ROUTES)
def test_routing_table(task, winner):
    if winner is None:
        with pytest.raises(NoRoute) as info:
            route(task, CATALOG)
        assert info.value.decision is not None
        assert "no LLM is configured" in info.value.message
        return
    decision = route(task, CATALOG)
    assert decision.chosen is not None and decision.chosen.name == winner
    cleared = [c for c in decision.candidates if c.cleared]
    assert decision.chosen.price_micro == min(c.price_micro for c in cleared)


def test_near_miss_is_explained():
    with pytest.raises(NoRoute) as info:
        route("what is the total?", CATALOG)
    decision = info.value.decision
    assert decision is not None
    assert [c.name for c in decision.near_misses] == ["number-total"]
    assert "near miss" in decision.explain()


def test_thresholds_per_kind_move_the_choice():
    strict_wasm = Thresholds(skill=0.5, wasm=1.0)
    decision = route("csv total: 12,30,-7", CATALOG, strict_wasm)
    assert decision.chosen is not None and decision.chosen.kind is RouteKind.SKILL


@pytest.mark.parametrize(("task", "output"), [
    ("total these invoices: 12.50, 30, 7.25", "total: 49.75 (3 numbers)"),
    ("total: $1,200.50, -0.50", "total: 1200.00 (2 numbers)"),
    ("sum 7", "total: 7 (1 number)"),
    ("add up: 0.1, 0.2", "total: 0.3 (2 numbers)"),  # exact, not 0.30000000000000004
    ("total for 2024: 5", "total: 5 (1 number)"),  # the instruction's numbers are skipped
])
def test_total_numbers(task, output):
    assert total_numbers(task) == output


def test_count_words():
    assert count_words("count the words in: a b\nc") == "words: 3, lines: 2, characters: 5"


@pytest.mark.parametrize(("task", "output"), [
    ('extract a.b from {"a": {"b": [1, 2]}}', "[1, 2]"),
    ('extract a.b[1] from {"a": {"b": [1, 2]}}', "2"),
    ('extract a.1 from {"a": [true, null]}', "null"),
    ('extract x from [1] and then some', None),
])
def test_extract_json(task, output):
    if output is None:
        with pytest.raises(SkillFailed, match="no 'x'"):
            extract_json(task)
    else:
        assert json.loads(extract_json(task)) == json.loads(output)


def test_sha256_of():
    assert sha256_of("sha256 of: hello") == hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize(("fn", "task", "message"), [
    (total_numbers, "total: none", "no numbers"),
    (count_words, "count the words in:   ", "nothing to count"),
    (extract_json, "extract a from nothing", "extract PATH from"),
    (extract_json, "extract a from {bad json}", "not valid JSON"),
])
def test_bad_input_for_a_chosen_skill_fails_clearly(fn, task, message):
    with pytest.raises(SkillFailed, match=message):
        fn(task)
