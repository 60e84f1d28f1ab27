"""Skill package manifests: strict validation (pure, stdlib + naosd.errors only).

A skill package is a directory or archive holding ``manifest.json`` and one
WASI command module. The manifest::

    {
      "name": "csv-total",                 # skill name rules as for agents
      "version": "1.0.0",                  # 1-32 chars of [0-9A-Za-z.+-]
      "description": "...",                # 1-500 chars
      "patterns": {"keywords": [...], "regexes": [...], "examples": [...]},
      "runtime": "wasip1-command",         # the only runtime
      "entrypoint": "_start",              # the only entrypoint
      "price_micro": 20,                   # micro-dollars per call, >= 0
      "module": "module.wasm",             # optional; a plain file name
      "sha256": "<64 hex>"                 # optional; the module's digest
    }

Unknown keys are refused (a typo never silently does nothing); every error
names the field. Regexes that could backtrack catastrophically (a quantified
group that itself holds a quantifier) are refused too: routing runs them on
every task, on the daemon's event loop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from actors.domain.definitions import validate_name
from actors.domain.routing import RouteKind, Skill
from naosd.errors import InvalidRequest

RUNTIME: Final = "wasip1-command"
ENTRYPOINT: Final = "_start"
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_PATTERNS: Final = 64
MAX_PATTERN_CHARS: Final = 200
MAX_PRICE_MICRO: Final = 10**12  # $1M per call: anything above is a typo
_VERSION: Final = re.compile(r"[0-9A-Za-z.+-]{1,32}")
_FILE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
# a group closed and quantified, whose body holds a quantifier: (a+)+, (\w*)*, (x{2,})+
_NESTED_QUANTIFIER: Final = re.compile(r"[*+}][^()]*\)[*+{?]")
_REQUIRED: Final = ("name", "version", "description", "patterns", "runtime", "entrypoint",
                    "price_micro")
_OPTIONAL: Final = ("module", "sha256")
_PATTERN_KINDS: Final = ("keywords", "regexes", "examples")


@dataclass(frozen=True, slots=True)
class SkillManifest:
    name: str
    version: str
    description: str
    keywords: tuple[str, ...]
    regexes: tuple[str, ...]
    examples: tuple[str, ...]
    price_micro: int
    module: str = "module.wasm"
    sha256: str | None = None

    def skill(self) -> Skill:
        """The routing view of this skill (a WASM route)."""
        return Skill(self.name, RouteKind.WASM, self.keywords, self.regexes, self.examples,
                     self.price_micro)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "version": self.version, "description": self.description,
            "patterns": {"keywords": list(self.keywords), "regexes": list(self.regexes),
                         "examples": list(self.examples)},
            "runtime": RUNTIME, "entrypoint": ENTRYPOINT, "price_micro": self.price_micro,
            "module": self.module,
        }
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


def parse_manifest(raw: bytes | str) -> SkillManifest:
    """Decode and validate a manifest.json.

    Raises:
        InvalidRequest: not UTF-8 JSON, too large, or any field missing, unknown or
            wrong; the message names the field and the rule.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidRequest(f"manifest.json: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"manifest.json: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("manifest.json: must be a JSON object")
    return validate_manifest(data)


def validate_manifest(data: dict[str, Any]) -> SkillManifest:
    """Validate a decoded manifest (see the module docstring for the rules)."""
    _check_keys(data)
    name = _name(data["name"])
    keywords, regexes, examples = _patterns(data["patterns"])
    manifest = SkillManifest(
        name=name,
        version=_text(data["version"], "version", _VERSION, "1-32 characters of 0-9 A-Z a-z . + -"),
        description=_description(data["description"]),
        keywords=keywords, regexes=regexes, examples=examples,
        price_micro=_price(data["price_micro"]),
        module=_text(data.get("module", "module.wasm"), "module", _FILE,
                     "a plain file name (no directories)"),
        sha256=_sha256(data.get("sha256")),
    )
    _exact(data["runtime"], RUNTIME, "runtime")
    _exact(data["entrypoint"], ENTRYPOINT, "entrypoint")
    manifest.skill()  # the routing rules (empty regexes, bad patterns) apply too
    return manifest


def _check_keys(data: dict[str, Any]) -> None:
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise InvalidRequest(f"manifest.json: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        allowed = ", ".join((*_REQUIRED, *_OPTIONAL))
        raise InvalidRequest(
            f"manifest.json: unknown field(s) {', '.join(map(str, unknown))} (allowed: {allowed})")


def _name(value: object) -> str:
    try:
        return validate_name(value, "skill")
    except InvalidRequest as exc:
        raise InvalidRequest(f"manifest.json: name: {exc.message}") from None


def _text(value: object, field: str, rule: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or rule.fullmatch(value) is None:
        raise InvalidRequest(f"manifest.json: {field} must be {what}, got {value!r}")
    return value


def _description(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 500:
        raise InvalidRequest(
            f"manifest.json: description must be a non-empty string of at most 500 "
            f"characters, got {_short(value)}")
    return value


def _exact(value: object, want: str, field: str) -> None:
    if value != want:
        raise InvalidRequest(f"manifest.json: {field} must be {want!r}, got {_short(value)}")


def _price(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRICE_MICRO:
        raise InvalidRequest(
            f"manifest.json: price_micro must be a whole number of micro-dollars from 0 to "
            f"{MAX_PRICE_MICRO}, got {_short(value)}")
    return value


def _sha256(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise InvalidRequest(
            f"manifest.json: sha256 must be 64 lowercase hex digits, got {_short(value)}")
    return value


def _patterns(value: object) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    if not isinstance(value, dict):
        raise InvalidRequest("manifest.json: patterns must be an object with keywords, "
                             "regexes and/or examples")
    unknown = sorted(set(value) - set(_PATTERN_KINDS))
    if unknown:
        raise InvalidRequest(f"manifest.json: patterns: unknown key(s) {', '.join(unknown)} "
                             "(allowed: keywords, regexes, examples)")
    found = tuple(_pattern_list(value.get(kind, []), kind) for kind in _PATTERN_KINDS)
    if not any(found):
        raise InvalidRequest("manifest.json: patterns must hold at least one keyword, "
                             "regex or example, or the skill could never be chosen")
    for regex in found[1]:
        if _NESTED_QUANTIFIER.search(regex):
            raise InvalidRequest(
                f"manifest.json: patterns.regexes: {regex!r} nests quantifiers, which can "
                "backtrack for ever on some tasks; simplify it")
    return found[0], found[1], found[2]


def _pattern_list(value: object, kind: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_PATTERNS:
        raise InvalidRequest(
            f"manifest.json: patterns.{kind} must be a list of at most {MAX_PATTERNS} strings")
    for item in value:
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_PATTERN_CHARS:
            raise InvalidRequest(
                f"manifest.json: patterns.{kind}: each must be a non-empty string of at most "
                f"{MAX_PATTERN_CHARS} characters, got {_short(item)}")
    return tuple(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
