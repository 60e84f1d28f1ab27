"""actors.domain.placement: requirements, node choice, liveness (pure)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from actors.domain.placement import (
    LOST,
    UP,
    Node,
    Requirements,
    choose,
    eligible,
    is_lost,
    parse_requirements,
    pin,
    satisfies,
)
from actors.domain.project import parse
from naosd.errors import ConfigError, InvalidRequest

A = Node("a", frozenset(), UP, local=True)
B = Node("b", frozenset({"gpu"}), UP)
C = Node("c", frozenset({"gpu", "ssd"}), UP)


def test_parse_splits_capabilities_and_node() -> None:
    req = parse_requirements(["gpu", "node=b", "gpu"])
    assert req == Requirements(frozenset({"gpu"}), "b")
    assert req.to_list() == ["gpu", "node=b"]
    assert str(req) == "gpu, node=b"
    assert parse_requirements([]).empty and str(parse_requirements([])) == "none"


@pytest.mark.parametrize(("items", "problem"), [
    (["GPU"], "required capability 'GPU'"),
    (["gpu!"], "required capability"),
    ([""], "required capability"),
    (["node="], "required node name"),
    (["node=a", "node=b"], "two nodes"),
    (["ram=4"], "only node=NAME takes a value"),
    ([7], "must be a string"),
    (["x"] * 17, "at most 16"),
])
def test_parse_refuses_bad_items_naming_them(items: list[object], problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_requirements(items)


def test_eligible_needs_up_capabilities_and_name() -> None:
    gpu = parse_requirements(["gpu"])
    assert not eligible(gpu, A) and eligible(gpu, B) and eligible(gpu, C)
    assert eligible(parse_requirements(["node=a"]), A)
    assert not eligible(parse_requirements(["node=a", "gpu"]), A)
    assert not eligible(gpu, Node("b", frozenset({"gpu"}), LOST))


def test_choose_least_loaded_then_local_then_name() -> None:
    none = parse_requirements([])
    assert choose(none, [A, B, C], {}) == A  # tie: local first
    assert choose(none, [A, B, C], {"a": 1}) == B  # b, c tie: by name
    assert choose(none, [C, B, A], {"a": 1, "b": 1}) == C
    assert choose(parse_requirements(["gpu"]), [A, B, C], {"b": 2, "c": 1}) == C
    assert choose(parse_requirements(["ssd"]), [A, B, C], {"c": 99}) == C


def test_pin_selects_one_registration_of_a_node() -> None:
    assert pin(Node("b", frozenset(), address="10.0.0.2:7735")) == {
        "naos.node": "b", "naos.address": "10.0.0.2:7735"}
    assert pin(B) == {"naos.node": "b"}
    caps = {"naos.node": "b", "naos.address": "10.0.0.2:7735"}
    assert satisfies(caps, pin(Node("b", frozenset(), address="10.0.0.2:7735")))
    assert not satisfies(caps, pin(Node("b", frozenset(), address="10.0.0.2:9999")))


def test_choose_none_when_nothing_is_eligible() -> None:
    assert choose(parse_requirements(["tpu"]), [A, B, C], {}) is None
    lost_b = Node("b", B.capabilities, LOST)
    assert choose(parse_requirements(["node=b"]), [A, lost_b], {}) is None
    assert choose(parse_requirements([]), [], {}) is None


def test_satisfies_is_thespians_capability_check() -> None:
    caps = {"naos.node": "b", "Admin Port": 1}
    assert satisfies(caps, None) and satisfies(caps, {})
    assert satisfies(caps, {"naos.node": "b"})
    assert not satisfies(caps, {"naos.node": "a"})
    assert not satisfies(caps, {"naos.other": "b"})


def test_lost_after_misses_intervals() -> None:
    assert not is_lost(10.0, 10.9, 0.2, 5)
    assert not is_lost(10.0, 11.0, 0.2, 5)
    assert is_lost(10.0, 11.01, 0.2, 5)


def test_naos_toml_agents_may_declare_requirements(tmp_path: Path) -> None:
    doc = tomllib.loads('[agents.embed]\ntemplate = "echo"\nrequires = ["gpu", "node=b"]\n'
                        '[agents.plain]\ntemplate = "echo"\n')
    project = parse(doc, tmp_path)
    by_name = {a.name: a for a in project.agents}
    assert by_name["embed"].requires == ("gpu", "node=b")
    assert by_name["plain"].requires == ()


@pytest.mark.parametrize(("requires", "problem"), [
    ('"gpu"', "expected a list of strings"),
    ("[1]", "expected a list of strings"),
    ('["GPU"]', "agents.x: required capability"),
    ('["node=a", "node=b"]', "two nodes"),
])
def test_naos_toml_bad_requirements_name_the_agent(tmp_path: Path, requires: str,
                                                   problem: str) -> None:
    doc = tomllib.loads(f'[agents.x]\ntemplate = "echo"\nrequires = {requires}\n')
    with pytest.raises(ConfigError, match=problem):
        parse(doc, tmp_path)
