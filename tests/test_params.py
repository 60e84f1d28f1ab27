from __future__ import annotations

from datetime import UTC, datetime

import pytest

from naosd.control.params import Bool, Int, Spec, Str, check, parse_since
from naosd.errors import InvalidRequest

SPECS = {"n": Int(20, lo=0, hi=100), "q": Str(), "follow": Bool(False),
         "agent": Str(None), "any": Spec(object, None)}


def test_defaults_fill_in():
    assert check("m", SPECS, {"q": "x"}) == {"n": 20, "q": "x", "follow": False,
                                              "agent": None, "any": None}


def test_binary_goes_only_to_a_parameter_that_takes_it():
    specs = {"module": Spec(bytes), "input": Spec((bytes, str), b"")}
    assert check("wasm.run", specs, {"module": b"\x00asm", "input": b"in"}) == {
        "module": b"\x00asm", "input": b"in"}


@pytest.mark.parametrize(("raw", "match"), [
    pytest.param({}, "missing required parameter 'q'", id="missing"),
    pytest.param({"q": "x", "zz": 1}, r"unknown parameter\(s\) zz", id="unknown"),
    pytest.param({"q": 1}, "'q': expected a string, got int", id="type"),
    pytest.param({"q": "x", "n": 101}, "'n': must be at most 100", id="range"),
    pytest.param({"q": "x", "n": True}, "'n': expected a number", id="bool-as-int"),
    pytest.param({"q": "x" * 5000}, "longer than", id="too-long"),
    pytest.param({"q": "x", "any": b"\x00"}, "'any': binary values are not allowed",
                 id="binary-for-any"),
    pytest.param({"q": b"x"}, "'q': binary values are not allowed", id="binary-for-str"),
])
def test_bad_params_are_named(raw, match):
    with pytest.raises(InvalidRequest, match=match):
        check("audit.tail", SPECS, raw)


NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("15m", "2026-11-24T11:45:00.000000Z"),
    ("2h", "2026-11-24T10:00:00.000000Z"),
    ("1d", "2026-11-23T12:00:00.000000Z"),
    ("2026-11-01T00:00:00Z", "2026-11-01T00:00:00.000000Z"),
    ("2026-11-01T02:00:00+02:00", "2026-11-01T00:00:00.000000Z"),
])
def test_since(text, expected):
    assert parse_since(text, NOW) == expected


def test_since_rejects_nonsense():
    with pytest.raises(InvalidRequest, match="neither a duration"):
        parse_since("yesterday-ish", NOW)
