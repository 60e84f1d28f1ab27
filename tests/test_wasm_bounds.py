"""Compile bounds of the WASM engine: size, function count and compile time.

A module of 500,000 empty functions (2 MB) once kept a sandbox worker
compiling for up to a minute past its caller's timeout. These tests build such
modules byte by byte and check that each bound holds before or while compiling.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wasm_modules import MAGIC, leb, many_functions, section

from actors.wasm import Limits, WasmEngine
from actors.wasm.files import read_module
from actors.wasm.limits import (
    MAX_COMPILE_TIMEOUT_MS,
    MAX_FUNCTIONS,
    MAX_MODULE_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_STDIN_BYTES,
    job_budget_s,
)
from actors.wasm.shape import module_shape
from naosd.errors import (
    ConfigError,
    WasmCompileTimeout,
    WasmInvalidModule,
    WasmModuleTooComplex,
    WasmModuleTooLarge,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "wasm"
ECHO = (EXAMPLES / "echo.wasm").read_bytes()
HALF_A_MILLION = many_functions(500_000)


@pytest.fixture
def engine(tmp_path: Path):
    with WasmEngine(tmp_path / "cache") as eng:
        yield eng


def test_the_shape_is_read_from_the_section_headers() -> None:
    assert module_shape(many_functions(3)).functions == 3
    shape = module_shape(HALF_A_MILLION)
    assert (shape.functions, shape.code_bytes) == (500_000, 1_500_000 + len(leb(500_000)))
    assert module_shape(ECHO).functions >= 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(MAGIC + b"\x0a\xff\xff\xff\xff\x0f", id="section-past-the-end"),
        pytest.param(MAGIC + b"\x03", id="truncated-size"),
        pytest.param(MAGIC + b"\x03\xff\xff\xff\xff\xff\x01", id="size-too-long"),
        pytest.param(MAGIC + section(3, b"\xff"), id="truncated-count"),
    ],
)
def test_malformed_section_headers_are_invalid(engine: WasmEngine, data: bytes) -> None:
    with pytest.raises(WasmInvalidModule, match="malformed module"):
        module_shape(data)
    assert engine.validate(data).verdict == "invalid"


def test_too_many_functions_are_refused_before_compiling(engine: WasmEngine) -> None:
    with pytest.raises(WasmModuleTooComplex, match="500000 functions; the limit is 50000") as info:
        engine.run(HALF_A_MILLION)
    assert info.value.code == "wasm_module_too_complex"
    report = engine.validate(HALF_A_MILLION)
    assert report.verdict == "too_large" and "functions" in report.problems[0]
    with pytest.raises(WasmModuleTooComplex):
        engine.run(many_functions(11), limits=Limits(functions=10))
    assert engine.stats.compiled == 0
    assert engine.run(many_functions(10), limits=Limits(functions=10)).exit_code == 0


def test_a_compile_past_its_deadline_is_abandoned(engine: WasmEngine) -> None:
    slow = many_functions(20_000)
    with pytest.raises(WasmCompileTimeout, match="longer than 20 ms") as info:
        engine.run(slow, limits=Limits(compile_timeout_ms=20))
    assert info.value.code == "wasm_compile_timeout"
    assert isinstance(info.value, TimeoutError)
    assert (engine.stats.abandoned, engine.stats.compiled) == (1, 0)
    assert engine.run(ECHO, b"next").stdout == b"next"  # the engine still serves


def test_limits_may_be_lowered_not_raised() -> None:
    for name, ceiling in [("module_bytes", MAX_MODULE_BYTES), ("functions", MAX_FUNCTIONS),
                          ("compile_timeout_ms", MAX_COMPILE_TIMEOUT_MS),
                          ("stdin_bytes", MAX_STDIN_BYTES), ("stdout_bytes", MAX_OUTPUT_BYTES),
                          ("stderr_bytes", MAX_OUTPUT_BYTES)]:
        assert getattr(Limits(**{name: ceiling}), name) == ceiling
        with pytest.raises(ConfigError, match=f"limit {name} must be <= {ceiling}"):
            Limits(**{name: ceiling + 1})


def test_a_job_budget_is_its_compile_deadline_plus_its_run_timeout() -> None:
    assert job_budget_s({"compile_timeout_ms": 300, "timeout_ms": 700}, run=True) == 1.0
    assert job_budget_s({"compile_timeout_ms": 300, "timeout_ms": 700}, run=False) == 0.3
    assert job_budget_s({"bogus": 1}, run=True) == job_budget_s({}, run=True) == 20.0


def test_a_module_file_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.wasm"
    with open(big, "wb") as fh:
        fh.truncate(MAX_MODULE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(WasmModuleTooLarge, match="larger than"):
        read_module(big)
    with pytest.raises(WasmInvalidModule, match="not a regular file"):
        read_module(Path("/dev/zero"))
    with pytest.raises(WasmInvalidModule, match="cannot open"):
        read_module(tmp_path / "missing.wasm")
    assert read_module(EXAMPLES / "echo.wasm") == ECHO
    assert os.path.getsize(big) == MAX_MODULE_BYTES + 1
