"""The built-in skills shipped with naos: deterministic Python handlers (pure, stdlib only).

Each skill is a routing :class:`~actors.domain.routing.Skill` (match patterns and a
price per call) plus ``run(task) -> str``. They run on the daemon's event loop, so
each is linear in the task's length (the broker caps that length) and never does I/O.
A task a skill was chosen for but cannot handle (no numbers to total, no JSON to
extract from) raises :class:`SkillFailed`, and nothing is charged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from actors.domain.routing import RouteKind, Skill
from naosd.errors import SkillFailed


@dataclass(frozen=True, slots=True)
class BuiltinSkill:
    skill: Skill
    description: str
    run: Callable[[str], str]


_NUMBER: Final = re.compile(r"(?<![\w.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
_JSON_PATH: Final = re.compile(r"\bextract\s+([\w.\[\]-]+)\s+from\s*(?=[\[{])", re.IGNORECASE)
_AFTER: Final = re.compile(r"(?:[:\n]|\bin\b|\bof\b)\s*", re.IGNORECASE)


def _body(task: str) -> str:
    """The part after the instruction: after the first colon (or newline), else all of it."""
    head, sep, rest = task.partition(":")
    if sep and len(head) <= 200:
        return rest
    return task


def total_numbers(task: str) -> str:
    """Sum every number after the instruction, exactly (decimal, commas as thousands)."""
    numbers = [Decimal(m.replace("$", "").replace(",", "")) for m in _NUMBER.findall(_body(task))]
    if not numbers:
        raise SkillFailed("number-total: the task holds no numbers to total")
    total = sum(numbers, Decimal(0))
    return f"total: {total:f} ({len(numbers)} number{'s' if len(numbers) != 1 else ''})"


def count_words(task: str) -> str:
    """Words, lines and characters of the text after the instruction."""
    text = _body(task).strip()
    if not text:
        raise SkillFailed("word-count: nothing to count after the instruction")
    return f"words: {len(text.split())}, lines: {len(text.splitlines())}, characters: {len(text)}"


def extract_json(task: str) -> str:
    """``extract a.b[0].c from {...}``: the value at that path, as JSON."""
    found = _JSON_PATH.search(task)
    if found is None:
        raise SkillFailed("json-extract: write the task as 'extract PATH from {json}'")
    try:
        value, _ = json.JSONDecoder().raw_decode(task, found.end())
    except ValueError as exc:
        raise SkillFailed(f"json-extract: the document is not valid JSON: {exc}") from None
    for step in _path_steps(found.group(1)):
        value = _step(value, step, found.group(1))
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _path_steps(path: str) -> list[str | int]:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    return [int(p[1:-1]) if p.startswith("[") else p for p in parts]


def _step(value: Any, step: str | int, path: str) -> Any:
    if isinstance(step, int) and isinstance(value, list) and step < len(value):
        return value[step]
    if isinstance(step, str) and isinstance(value, dict) and step in value:
        return value[step]
    if isinstance(step, str) and step.isdigit() and isinstance(value, list):
        return _step(value, int(step), path)
    raise SkillFailed(f"json-extract: path {path!r}: no {step!r} in the document")


def sha256_of(task: str) -> str:
    """The SHA-256 of the text after the instruction, as UTF-8."""
    _, sep, rest = task.partition(":")
    text = rest.strip() if sep else _AFTER.split(task, maxsplit=1)[-1].strip()
    return hashlib.sha256(text.encode()).hexdigest()


BUILTIN: Final[tuple[BuiltinSkill, ...]] = (
    BuiltinSkill(
        Skill("number-total", RouteKind.SKILL,
              keywords=("total", "sum", "add up", "invoices", "amounts"),
              regexes=(r"\b(?:total|sum|add up)\b[^\n]{0,200}?\d",),
              examples=("total these invoices: 12.50, 30, 7.25", "sum 3, 4 and 5"),
              price_micro=5),
        "Sums the numbers after the instruction exactly (decimals, $ and thousands commas).",
        total_numbers),
    BuiltinSkill(
        Skill("word-count", RouteKind.SKILL,
              keywords=("word count", "count words", "count the words", "how many words"),
              regexes=(r"\b(?:count|how many)\b[^\n]{0,40}\bwords?\b",),
              examples=("count the words in: the quick brown fox",),
              price_micro=2),
        "Counts words, lines and characters of the text after the instruction.",
        count_words),
    BuiltinSkill(
        Skill("json-extract", RouteKind.SKILL,
              keywords=("extract", "json"),
              regexes=(r"\bextract\s+[\w.\[\]-]+\s+from\s*[\[{]",),
              examples=('extract user.name from {"user": {"name": "ada"}}',),
              price_micro=5),
        "Extracts the value at a dotted path (a.b[0].c) from the JSON document in the task.",
        extract_json),
    BuiltinSkill(
        Skill("sha256", RouteKind.SKILL,
              keywords=("sha256", "sha-256", "hash"),
              regexes=(r"\bsha-?256\b",),
              examples=("sha256 of: hello",),
              price_micro=1),
        "The SHA-256 hex digest of the text after the instruction.",
        sha256_of),
)
BUILTIN_BY_NAME: Final = {b.skill.name: b for b in BUILTIN}
