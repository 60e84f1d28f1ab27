"""Skill manifests: strict validation, one field at a time (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.domain.routing import RouteKind
from actors.domain.skill_manifest import parse_manifest, validate_manifest
from naosd.errors import InvalidRequest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "skills" / "csv-total"


def good() -> dict:
    return json.loads((EXAMPLE / "manifest.json").read_text())


def test_the_shipped_example_is_valid_and_routes_as_wasm():
    manifest = parse_manifest((EXAMPLE / "manifest.json").read_bytes())
    assert (manifest.name, manifest.version, manifest.price_micro) == ("csv-total", "1.0.0", 3)
    assert manifest.skill().kind is RouteKind.WASM
    assert validate_manifest(manifest.to_json()) == manifest


def test_the_shipped_module_is_built_from_its_source():
    wasmtime = pytest.importorskip("wasmtime")
    built = wasmtime.wat2wasm((EXAMPLE / "module.wat").read_text())
    assert built == (EXAMPLE / "module.wasm").read_bytes()


@pytest.mark.parametrize(("raw", "message"), [
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b" " * (64 * 1024 + 1), "larger than"),
])
def test_undecodable_manifests(raw, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_manifest(raw)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "", "invalid skill name"),
    ("name", 7, "invalid skill name"),
    ("version", "", "version must be"),
    ("version", "1.0 beta", "version must be"),
    ("description", "", "description must be"),
    ("description", "x" * 501, "description must be"),
    ("runtime", "wasip2", "runtime must be 'wasip1-command'"),
    ("entrypoint", "main", "entrypoint must be '_start'"),
    ("price_micro", -1, "price_micro"),
    ("price_micro", True, "price_micro"),
    ("price_micro", "5", "price_micro"),
    ("price_micro", 10**13, "price_micro"),
    ("module", "dir/module.wasm", "plain file name"),
    ("module", "..", "plain file name"),
    ("sha256", "ABC", "64 lowercase hex"),
    ("patterns", [], "patterns must be an object"),
    ("patterns", {"keywords": "csv"}, "patterns.keywords must be a list"),
    ("patterns", {"keywords": [""]}, "non-empty string"),
    ("patterns", {"keywords": ["x" * 201]}, "non-empty string"),
    ("patterns", {"keywords": ["k"] * 65}, "at most 64"),
    ("patterns", {"words": ["x"]}, r"unknown key\(s\) words"),
    ("patterns", {"keywords": []}, "at least one keyword"),
    ("patterns", {"regexes": ["("]}, "bad regex"),
    ("patterns", {"regexes": ["a?"]}, "matches the empty string"),
    ("patterns", {"regexes": ["(a+)+b"]}, "nests quantifiers"),
    ("patterns", {"regexes": [r"(\w*)*$"]}, "nests quantifiers"),
    ("patterns", {"regexes": ["(x{2,})+y"]}, "nests quantifiers"),
    ("extra", 1, r"unknown field\(s\) extra"),
])
def test_each_bad_field_is_named(field, value, message):
    data = good()
    data[field] = value
    with pytest.raises(InvalidRequest, match=message):
        validate_manifest(data)


@pytest.mark.parametrize("field", ["name", "version", "description", "patterns", "runtime",
                                   "entrypoint", "price_micro"])
def test_each_required_field(field):
    data = good()
    del data[field]
    with pytest.raises(InvalidRequest, match=f"missing field\\(s\\) {field}"):
        validate_manifest(data)


def test_optional_fields_default():
    data = good()
    del data["module"]
    manifest = validate_manifest(data)
    assert manifest.module == "module.wasm" and manifest.sha256 is None
    assert "sha256" not in manifest.to_json()
