"""The one error table: every NaosError subclass in every package is declared
once, in a leaf module of ``naosd.errors``, with its own code; the client
rebuilds each from its code, and each has an exit code."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import actors
import naos
import naosctl
import naosctl.main  # first: its command modules import it back
import naosd
from naosd import errors
from naosd.errors import ERRORS_BY_CODE, NaosError, RemoteError, from_wire

LEAVES = {"naosd.errors.core", "naosd.errors.wasm", "naosd.errors.broker",
          "naosd.errors.remote", "naosd.errors.agents"}
LSB_EXIT_CODES = {1, 2, 3, 4, 6, 7}


def every_module() -> list[types.ModuleType]:
    return [importlib.import_module(info.name) for package in (naos, naosd, actors, naosctl)
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
            if not info.name.endswith("__main__")]  # __main__ runs the program


def subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | subclasses(sub)
    return out


@pytest.fixture(scope="module")
def every_error_class() -> set[type[NaosError]]:
    modules = every_module()
    declared = {value for module in modules for value in vars(module).values()
                if isinstance(value, type) and issubclass(value, NaosError)}
    ours = {cls for cls in subclasses(NaosError) | declared
            if cls.__module__.split(".")[0] in ("naos", "naosd", "actors", "naosctl")}
    assert len(ours) > 40  # the walk found the whole tree
    return ours | {NaosError}


def test_every_error_class_is_declared_in_a_leaf_of_the_table(every_error_class):
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in every_error_class
                     if c.__module__ not in LEAVES)
    assert outside == [], "declare these in a leaf module of naosd.errors"


def test_every_code_is_unique_rebuilt_and_has_an_exit_code(every_error_class):
    for cls in every_error_class - {RemoteError}:
        assert "code" in vars(cls), f"{cls.__qualname__} must declare its own code"
        assert ERRORS_BY_CODE[cls.code] is cls, f"{cls.code} is declared twice"
        rebuilt = from_wire(cls.code, "why")
        assert type(rebuilt) is cls and rebuilt.message == "why"
        assert cls.exit_code in LSB_EXIT_CODES, cls
        assert errors.meaning(cls), f"{cls.__qualname__} needs a docstring (its meaning)"
    assert set(ERRORS_BY_CODE.values()) == every_error_class - {RemoteError}


def test_an_unknown_code_keeps_it_in_a_remote_error():
    err = from_wire("from_a_newer_naosd", "something new")
    assert type(err) is RemoteError and err.code == "from_a_newer_naosd"
    assert (err.message, err.exit_code) == ("something new", 1)


def test_a_code_declared_twice_fails_at_import():
    leaf = types.ModuleType("tests.twice")  # not "naosd.": the walk above ignores it

    class One(NaosError):
        code = "same"

    class Two(NaosError):
        code = "same"

    for cls in (One, Two):
        cls.__module__ = leaf.__name__
        setattr(leaf, cls.__name__, cls)
    with pytest.raises(TypeError, match="code 'same' is declared by both"):
        errors._collect((leaf,))


@pytest.mark.parametrize(("code", "exit_code"), [
    ("wasm_invalid_module", 2), ("wasm_cache_unsafe", 6), ("axis_unknown_auid", 4),
    ("budget_exceeded", 1), ("budget_throttled", 1), ("trust_denied", 1), ("no_route", 1),
    ("skill_failed", 1), ("wasm_exit", 1), ("llm_not_configured", 6)])
def test_codes_the_client_could_not_rebuild_before(code, exit_code):
    rebuilt = from_wire(code, "m")
    assert type(rebuilt) is not RemoteError and rebuilt.exit_code == exit_code
