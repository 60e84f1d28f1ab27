"""Hostile tests for the WASM engine (actors.wasm): every case must end in its own clear
error, and the shared engine must still serve the next run (checked after each test)."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime

from actors.wasm import (
    NAOS_FAULT,
    NAOS_HOST_ERROR,
    NAOS_NOT_FOUND,
    NAOS_OK,
    NAOS_TOO_LARGE,
    Limits,
    RunResult,
    WasmEngine,
    price_micro_usd,
)
from naosd.errors import (
    ConfigError,
    InvalidRequest,
    NaosError,
    Unavailable,
    WasmCacheUnsafe,
    WasmExit,
    WasmImportDenied,
    WasmInputTooLarge,
    WasmInvalidModule,
    WasmMemoryLimit,
    WasmModuleTooLarge,
    WasmOutOfFuel,
    WasmOutputTooLarge,
    WasmTimeout,
    WasmTrap,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "wasm"
ECHO = (EXAMPLES / "echo.wasm").read_bytes()
SUM = (EXAMPLES / "sum.wasm").read_bytes()
KV_COUNTER = (EXAMPLES / "kv-counter.wasm").read_bytes()
ALL_NAOS = frozenset({"log", "kv_get", "kv_set"})

# Imports and a `$print(ptr, len)` helper shared by the WAT guests below; the
# iovec scratch lives at 0..16, guest data from 1024 on.
PRELUDE = """
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func $print (param $ptr i32) (param $len i32)
    (drop (call $write (i32.const 1) (local.get $ptr) (local.get $len))))
  (func $print_byte (param $b i32)
    (i32.store8 (i32.const 16) (local.get $b))
    (call $print (i32.const 16) (i32.const 1)))
"""


def wat(body: str, *, imports: str = "", memory: str = '(memory (export "memory") 1)') -> bytes:
    return bytes(wasmtime.wat2wasm(f"(module {imports} {PRELUDE} {memory} {body})"))


def command(start_body: str, **kw: str) -> bytes:
    return wat(f'(func (export "_start") {start_body})', **kw)


class FakeHost:
    def __init__(self, fail: bool = False) -> None:
        self.kv: dict[bytes, bytes] = {}
        self.logs: list[tuple[int, str]] = []
        self.fail = fail

    def kv_get(self, key: bytes) -> bytes | None:
        if self.fail:
            raise RuntimeError("database is on fire")
        return self.kv.get(key)

    def kv_set(self, key: bytes, value: bytes) -> None:
        self.kv[key] = value

    def log(self, level: int, text: str) -> None:
        self.logs.append((level, text))


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmEngine]:
    with WasmEngine(tmp_path_factory.mktemp("wasm") / "cache") as eng:
        yield eng


@pytest.fixture
def engine(shared_engine: WasmEngine) -> Iterator[WasmEngine]:
    """The shared engine; after each test it must still run echo correctly."""
    yield shared_engine
    assert shared_engine.run(ECHO, b"still alive").stdout == b"still alive"


# ------------------------------------------------------------------ the examples


def test_echo_round_trip(engine: WasmEngine) -> None:
    data = bytes(range(256)) * 1000
    result = engine.run(ECHO, data)
    assert result.stdout == data
    assert (result.exit_code, result.stderr) == (0, b"")
    assert result.fuel_used > 0
    assert result.cost_micro_usd == price_micro_usd(result.fuel_used, 1)
    assert result.memory_peak_bytes == 65536


def test_sum_written_in_c(engine: WasmEngine) -> None:
    records = b'{"records":[{"id":"a","amount_cents":1250},{"id":"b","amount_cents":-50}]}'
    result = engine.run(SUM, records)
    assert result.raise_for_exit().stdout == b'{"total_cents":1200,"count":2}\n'


def test_sum_reports_bad_input_with_an_exit_code(engine: WasmEngine) -> None:
    result = engine.run(SUM, b'{"records":[{"id":"a","amount_cents":1.5}]}')
    assert result.exit_code == 2
    assert b"amount must be an integer" in result.stderr
    with pytest.raises(WasmExit) as info:
        result.raise_for_exit()
    assert info.value.result is result


def test_kv_counter_uses_the_granted_host_functions(engine: WasmEngine) -> None:
    host = FakeHost()
    outputs = [engine.run(KV_COUNTER, grants=ALL_NAOS, host=host).stdout for _ in range(3)]
    assert outputs == [b"1\n", b"2\n", b"3\n"]
    assert host.kv == {b"counter": b"3"}
    assert host.logs == [(1, "counter=1"), (1, "counter=2"), (1, "counter=3")]


# ------------------------------------------------------------------ CPU and time

INFINITE_LOOP = command("(loop (br 0))")


def test_infinite_loop_runs_out_of_fuel(engine: WasmEngine) -> None:
    limits = Limits(fuel=50_000_000, price_micro_usd_per_mfuel=3)
    with pytest.raises(WasmOutOfFuel) as info:
        engine.run(INFINITE_LOOP, limits=limits)
    assert info.value.code == "wasm_out_of_fuel"
    assert info.value.result is not None
    assert info.value.result.fuel_used == 50_000_000  # the whole budget is charged
    assert info.value.result.cost_micro_usd == 150


def test_infinite_loop_times_out_when_fuel_is_huge(engine: WasmEngine) -> None:
    limits = Limits(fuel=10**15, timeout_ms=200)
    started = time.monotonic()
    with pytest.raises(WasmTimeout) as info:
        engine.run(INFINITE_LOOP, limits=limits)
    elapsed = time.monotonic() - started
    assert 0.19 < elapsed < 1.0
    assert isinstance(info.value, TimeoutError)
    assert info.value.result is not None
    assert info.value.result.fuel_used == 10**15


def test_start_function_loop_is_stopped_too(engine: WasmEngine) -> None:
    module = wat('(func $spin (loop (br 0))) (start $spin) (func (export "_start"))')
    with pytest.raises(WasmOutOfFuel):
        engine.run(module, limits=Limits(fuel=1_000_000))
    with pytest.raises(WasmTimeout):
        engine.run(module, limits=Limits(fuel=10**13, timeout_ms=50))


def test_sleeping_in_poll_oneoff_cannot_outlive_the_timeout(engine: WasmEngine) -> None:
    # A 60 s relative clock subscription on the monotonic clock.
    module = command(
        """
        (i32.store8 (i32.const 1032) (i32.const 0))
        (i32.store (i32.const 1040) (i32.const 1))
        (i64.store (i32.const 1048) (i64.const 60000000000))
        (drop (call $poll (i32.const 1024) (i32.const 1200) (i32.const 1) (i32.const 1300)))
        """,
        imports='(import "wasi_snapshot_preview1" "poll_oneoff" '
        "(func $poll (param i32 i32 i32 i32) (result i32)))",
    )
    started = time.monotonic()
    with pytest.raises(WasmTimeout):
        engine.run(module, limits=Limits(timeout_ms=200, fuel=10**12))
    assert time.monotonic() - started < 1.0


def test_short_sleep_in_poll_oneoff_works(engine: WasmEngine) -> None:
    module = command(
        """
        (i32.store8 (i32.const 1032) (i32.const 0))
        (i32.store (i32.const 1040) (i32.const 1))
        (i64.store (i32.const 1048) (i64.const 20000000))
        (call $print_byte (i32.add (i32.const 48)
          (call $poll (i32.const 1024) (i32.const 1200) (i32.const 1) (i32.const 1300))))
        (call $print_byte (i32.add (i32.const 48) (i32.load (i32.const 1300))))
        """,
        imports='(import "wasi_snapshot_preview1" "poll_oneoff" '
        "(func $poll (param i32 i32 i32 i32) (result i32)))",
    )
    result = engine.run(module)
    assert result.stdout == b"01"  # errno 0, one event
    assert result.wall_ms >= 19


# ------------------------------------------------------------------ memory and stack


def test_memory_bomb_hits_the_memory_limit(engine: WasmEngine) -> None:
    bomb = command(
        "(loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"
    )
    limits = Limits(memory_bytes=4 * 1024 * 1024)
    with pytest.raises(WasmMemoryLimit) as info:
        engine.run(bomb, limits=limits)
    assert info.value.result is not None
    assert info.value.result.memory_peak_bytes == 4 * 1024 * 1024


def test_gc_heap_bomb_hits_the_memory_limit(engine: WasmEngine) -> None:
    # wasm GC objects live outside linear memory; the store's memory cap bounds them too
    bomb = bytes(wasmtime.wat2wasm("""
      (module
        (type $a (array (mut i64)))
        (rec (type $node (struct (field (ref null $node)) (field (ref null $a)))))
        (global $head (mut (ref null $node)) (ref.null $node))
        (func (export "_start")
          (loop $l
            (global.set $head (struct.new $node (global.get $head)
                                              (array.new_default $a (i32.const 100000))))
            (br $l))))"""))
    with pytest.raises(WasmMemoryLimit):
        engine.run(bomb, limits=Limits(memory_bytes=8 * 1024 * 1024, fuel=10**11))


def test_initial_memory_over_the_limit_fails_before_running(engine: WasmEngine) -> None:
    big = command("", memory='(memory (export "memory") 200)')  # 12.5 MiB
    with pytest.raises(WasmMemoryLimit, match="memory"):
        engine.run(big, limits=Limits(memory_bytes=8 * 1024 * 1024))


def test_table_over_the_limit_fails_before_running(engine: WasmEngine) -> None:
    tabled = wat('(table 50000 funcref) (func (export "_start"))')
    with pytest.raises(WasmMemoryLimit, match="limit"):
        engine.run(tabled, limits=Limits(table_elements=1000))


def test_table_grow_over_the_limit_returns_minus_one(engine: WasmEngine) -> None:
    module = wat('(table $t 10 funcref) (func (export "_start") (call $print_byte (i32.add '
                 "(i32.const 1) (table.grow $t (ref.null func) (i32.const 5000)))))")
    assert list(engine.run(module, limits=Limits(table_elements=1000)).stdout) == [0]
    assert list(engine.run(module, limits=Limits(table_elements=10000)).stdout) == [11]


def test_deep_recursion_overflows_the_stack(engine: WasmEngine) -> None:
    recursion = wat(
        '(func $f (param i32) (result i32) (call $f (i32.add (local.get 0) (i32.const 1))))'
        '(func (export "_start") (drop (call $f (i32.const 0))))'
    )
    with pytest.raises(WasmTrap) as info:
        engine.run(recursion)
    assert info.value.trap_code == "stack_overflow"
    assert "stack" in str(info.value)


def test_unreachable_traps_with_its_message(engine: WasmEngine) -> None:
    with pytest.raises(WasmTrap) as info:
        engine.run(command("(call $print (i32.const 1024) (i32.const 3)) unreachable",
                           memory='(memory (export "memory") 1) (data (i32.const 1024) "abc")'))
    assert info.value.trap_code == "unreachable"
    assert "unreachable" in str(info.value)
    assert info.value.code == "wasm_trap"
    assert info.value.result is not None
    assert info.value.result.stdout == b"abc"  # partial output is kept
    assert info.value.result.fuel_used == Limits().fuel


# ------------------------------------------------------------------ exit codes


@pytest.mark.parametrize("code", [0, 1, 42, 125])
def test_exit_codes_are_results(engine: WasmEngine, code: int) -> None:
    module = command(
        f"(call $print (i32.const 1024) (i32.const 2)) (call $proc_exit (i32.const {code}))",
        memory='(memory (export "memory") 1) (data (i32.const 1024) "ok")',
    )
    result = engine.run(module)
    assert (result.exit_code, result.stdout) == (code, b"ok")
    assert result.fuel_used < Limits().fuel  # an exit is not a trap


def test_exit_codes_outside_wasi_range_trap(engine: WasmEngine) -> None:
    with pytest.raises(WasmTrap, match=r"exit status outside of \[0\.\.126\)"):
        engine.run(command("(call $proc_exit (i32.const 200))"))


def test_stderr_only_guest(engine: WasmEngine) -> None:
    module = command(
        "(drop (call $write (i32.const 2) (i32.const 1024) (i32.const 5)))",
        memory='(memory (export "memory") 1) (data (i32.const 1024) "oops\\n")',
    )
    result = engine.run(module)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"", b"oops\n")


# ------------------------------------------------------------------ imports and grants


def test_unknown_import_is_denied_by_name(engine: WasmEngine) -> None:
    module = command("", imports='(import "env" "system" (func (param i32)))')
    with pytest.raises(WasmImportDenied, match=r"env\.system"):
        engine.run(module)
    report = engine.validate(module)
    assert report.verdict == "denied"
    assert not report.ok
    assert report.denied_imports == ("env.system: unknown import",)


def test_ungranted_host_function_is_denied_by_name(engine: WasmEngine) -> None:
    module = command("", imports='(import "naos" "kv_set" (func (param i32 i32 i32 i32) '
                                 "(result i32)))")
    with pytest.raises(WasmImportDenied, match=r"naos\.kv_set.*not granted"):
        engine.run(module, grants={"log"}, host=FakeHost())
    assert engine.run(module, grants={"kv_set"}, host=FakeHost()).exit_code == 0


def test_granted_host_function_with_a_wrong_signature_is_denied(engine: WasmEngine) -> None:
    module = command("", imports='(import "naos" "log" (func (param i64)))')
    with pytest.raises(WasmImportDenied, match=r"naos\.log: signature"):
        engine.run(module, grants={"log"}, host=FakeHost())


def test_memory_import_is_denied(engine: WasmEngine) -> None:
    module = wat('(func (export "_start"))', memory="",
                 imports='(import "env" "memory" (memory 1))')
    with pytest.raises(WasmImportDenied, match="only functions"):
        engine.run(module)


def test_unknown_grant_and_grant_without_host_are_refused(engine: WasmEngine) -> None:
    with pytest.raises(InvalidRequest, match="unknown grant"):
        engine.run(ECHO, grants={"exec"})
    with pytest.raises(InvalidRequest, match="host services"):
        engine.run(ECHO, grants={"log"})


def test_host_functions_check_guest_pointers(engine: WasmEngine) -> None:
    host = FakeHost()
    # kv_set with a value past the end of memory, then kv_get of a missing key,
    # then a key over the size limit; each return code printed as a byte.
    module = command(
        """
        (call $print_byte (i32.sub (i32.const 0)
          (call $kv_set (i32.const 1024) (i32.const 1) (i32.const 65530) (i32.const 100))))
        (call $print_byte (i32.sub (i32.const 0)
          (call $kv_get (i32.const 1024) (i32.const 1) (i32.const 2048) (i32.const 8))))
        (call $print_byte (i32.sub (i32.const 0)
          (call $kv_get (i32.const 1024) (i32.const 300) (i32.const 2048) (i32.const 8))))
        (call $print_byte (i32.sub (i32.const 0)
          (call $kv_set (i32.const -16) (i32.const 1) (i32.const 1024) (i32.const 1))))
        """,
        imports='(import "naos" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))'
        '(import "naos" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))',
    )
    result = engine.run(module, grants={"kv_get", "kv_set"}, host=host)
    assert list(result.stdout) == [-NAOS_FAULT, -NAOS_NOT_FOUND, -NAOS_TOO_LARGE, -NAOS_FAULT]
    assert host.kv == {}


def test_failing_host_service_returns_an_error_code(engine: WasmEngine) -> None:
    module = command(
        "(call $print_byte (i32.sub (i32.const 0)"
        "  (call $kv_get (i32.const 1024) (i32.const 1) (i32.const 2048) (i32.const 8))))",
        imports='(import "naos" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))',
    )
    result = engine.run(module, grants={"kv_get"}, host=FakeHost(fail=True))
    assert list(result.stdout) == [-NAOS_HOST_ERROR]
    assert result.host_errors == ("naos.kv_get: RuntimeError: database is on fire",)


def test_kv_get_refuses_values_over_the_limit(engine: WasmEngine) -> None:
    host = FakeHost()
    host.kv[b"k"] = b"v" * 5000
    module = command(
        "(call $print_byte (i32.sub (i32.const 0)"
        "  (call $kv_get (i32.const 1024) (i32.const 1) (i32.const 2048) (i32.const 9000))))",
        imports='(import "naos" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))',
        memory='(memory (export "memory") 1) (data (i32.const 1024) "k")',
    )
    result = engine.run(module, grants={"kv_get"}, host=host,
                        limits=Limits(kv_value_bytes=4096))
    assert list(result.stdout) == [-NAOS_TOO_LARGE]


def test_kv_get_with_a_small_buffer_returns_the_length(engine: WasmEngine) -> None:
    host = FakeHost()
    host.kv[b"k"] = b"0123456789"
    module = command(
        "(call $print_byte (call $kv_get (i32.const 1024) (i32.const 1) (i32.const 2048) "
        "(i32.const 4)))"
        "(call $print (i32.const 2048) (i32.const 4))",
        imports='(import "naos" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))',
        memory='(memory (export "memory") 1) (data (i32.const 1024) "k")',
    )
    result = engine.run(module, grants={"kv_get"}, host=host)
    assert result.stdout == b"\x0a\0\0\0\0"  # length 10, nothing written


def test_log_rejects_bad_levels_and_long_lines(engine: WasmEngine) -> None:
    host = FakeHost()
    module = command(
        """
        (call $print_byte (i32.sub (i32.const 0) (call $log (i32.const 2) (i32.const 1024)
          (i32.const 2))))
        (call $print_byte (i32.sub (i32.const 0) (call $log (i32.const 9) (i32.const 1024)
          (i32.const 2))))
        (call $print_byte (i32.sub (i32.const 0) (call $log (i32.const 1) (i32.const 1024)
          (i32.const 5000))))
        """,
        imports='(import "naos" "log" (func $log (param i32 i32 i32) (result i32)))',
        memory='(memory (export "memory") 1) (data (i32.const 1024) "hi")',
    )
    result = engine.run(module, grants={"log"}, host=host)
    assert list(result.stdout) == [NAOS_OK, 4, -NAOS_TOO_LARGE]
    assert host.logs == [(2, "hi")]


# ------------------------------------------------------------------ no ambient authority


def test_path_open_fails_without_preopens(engine: WasmEngine, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # path_open(dirfd, dirflags, path, path_len, oflags=CREAT, rights, rights, fdflags, fd*)
    # on fd 3 (the first preopen, if there were one), on stdin, and with an absolute path.
    calls = "".join(
        f"""
        (call $print_byte (call $path_open (i32.const {fd}) (i32.const 0) (i32.const {ptr})
          (i32.const {length}) (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff)
          (i32.const 0) (i32.const 2048)))
        (call $print_byte (call $fd_prestat_get (i32.const {fd}) (i32.const 2056)))"""
        for fd, ptr, length in ((3, 1024, 9), (0, 1024, 9), (4, 1036, 12)))
    module = command(
        calls,
        imports='(import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 '
        "i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"
        '(import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get '
        "(param i32 i32) (result i32)))",
        memory='(memory (export "memory") 1) (data (i32.const 1024) "pwned.txt\\00\\00")'
        '(data (i32.const 1036) "/tmp/pwned.x")',
    )
    before = set(os.listdir(tmp_path))
    result = engine.run(module)
    errnos = list(result.stdout)
    assert len(errnos) == 6
    assert all(e != 0 for e in errnos), errnos  # EBADF (8) or ENOTDIR (54)
    assert set(os.listdir(tmp_path)) == before
    assert not Path("/tmp/pwned.x").exists()


def test_sockets_are_unreachable(engine: WasmEngine) -> None:
    module = command(
        """
        (call $print_byte (call $sock_accept (i32.const 3) (i32.const 0) (i32.const 2048)))
        (call $print_byte (call $sock_accept (i32.const 0) (i32.const 0) (i32.const 2048)))
        (call $print_byte (call $sock_shutdown (i32.const 1) (i32.const 3)))
        """,
        imports='(import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept '
        "(param i32 i32 i32) (result i32)))"
        '(import "wasi_snapshot_preview1" "sock_shutdown" (func $sock_shutdown '
        "(param i32 i32) (result i32)))",
    )
    errnos = list(engine.run(module).stdout)
    assert len(errnos) == 3
    assert all(e != 0 for e in errnos), errnos


def test_no_env_and_no_args(engine: WasmEngine) -> None:
    module = command(
        """
        (drop (call $environ_sizes_get (i32.const 2048) (i32.const 2052)))
        (drop (call $args_sizes_get (i32.const 2056) (i32.const 2060)))
        (call $print_byte (i32.load (i32.const 2048)))
        (call $print_byte (i32.load (i32.const 2056)))
        """,
        imports='(import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get '
        "(param i32 i32) (result i32)))"
        '(import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get '
        "(param i32 i32) (result i32)))",
    )
    assert list(engine.run(module).stdout) == [0, 0]


# ------------------------------------------------------------------ sizes


def test_huge_stdout_is_cut_at_the_cap(engine: WasmEngine) -> None:
    flood = command("(loop (call $print (i32.const 1024) (i32.const 60000)) (br 0))")
    limits = Limits(stdout_bytes=100_000, fuel=10_000_000)
    with pytest.raises(WasmOutputTooLarge, match="stdout") as info:
        engine.run(flood, limits=limits)
    assert info.value.result is not None
    assert len(info.value.result.stdout) == 100_000


def test_huge_stderr_is_cut_at_the_cap(engine: WasmEngine) -> None:
    module = command(
        "(loop (br_if 0 (i32.eqz (call $write (i32.const 2) (i32.const 1024) "
        "(i32.const 4096)))))"
    )
    with pytest.raises(WasmOutputTooLarge, match="stderr") as info:
        engine.run(module, limits=Limits(stderr_bytes=10_000))
    assert info.value.result is not None
    assert len(info.value.result.stderr) == 10_000
    assert info.value.result.fuel_used < Limits().fuel  # stopped on the write error


def test_oversized_input_is_refused_before_running(engine: WasmEngine) -> None:
    with pytest.raises(WasmInputTooLarge):
        engine.run(ECHO, b"x" * 1001, limits=Limits(stdin_bytes=1000))
    assert engine.run(ECHO, b"x" * 1000, limits=Limits(stdin_bytes=1000)).stdout == b"x" * 1000


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"MZ\x90\x00" * 100, id="not-wasm"),
        pytest.param(ECHO[:40], id="truncated"),
        pytest.param(b"\0asm\x01\0\0\0" + os.urandom(200), id="random-body"),
        pytest.param(b'(module (func (export "_start")))', id="wat-text"),
        pytest.param(b"\0asm\x0d\0\x01\0", id="component"),
    ],
)
def test_malformed_module_bytes(engine: WasmEngine, garbage: bytes) -> None:
    with pytest.raises(WasmInvalidModule) as info:
        engine.run(garbage)
    assert info.value.code == "wasm_invalid_module"
    assert engine.validate(garbage).verdict == "invalid"


def test_oversized_module(engine: WasmEngine) -> None:
    with pytest.raises(WasmModuleTooLarge):
        engine.run(SUM, limits=Limits(module_bytes=len(SUM) - 1))
    assert engine.validate(SUM, Limits(module_bytes=1000)).verdict == "too_large"


@pytest.mark.parametrize(
    "exports",
    [
        pytest.param('(func (export "_initialize"))', id="reactor"),
        pytest.param('(func (export "_start") (param i32))', id="start-with-params"),
        pytest.param('(global (export "_start") i32 (i32.const 0))', id="start-not-a-func"),
    ],
)
def test_module_without_start_is_not_a_command(engine: WasmEngine, exports: str) -> None:
    module = wat(exports)
    with pytest.raises(WasmInvalidModule, match="_start"):
        engine.run(module)
    assert engine.validate(module).verdict == "not_a_command"


def test_validate_reports_imports_and_exports(engine: WasmEngine) -> None:
    report = engine.validate(KV_COUNTER, grants=ALL_NAOS)
    assert report.ok
    assert report.has_start
    names = {str(i) for i in report.imports}
    assert {"naos.kv_get", "naos.kv_set", "naos.log", "wasi_snapshot_preview1.fd_write"} <= names
    assert {e.name for e in report.exports} == {"memory", "_start"}
    assert report.size == len(KV_COUNTER)


# ------------------------------------------------------------------ isolation

COUNTING_GUEST = wat(
    """
    (global $g (mut i32) (i32.const 0))
    (func (export "_start")
      (global.set $g (i32.add (global.get $g) (i32.const 1)))
      (i32.store8 (i32.const 2000) (i32.add (i32.load8_u (i32.const 2000)) (i32.const 1)))
      (call $print_byte (i32.add (i32.const 48) (global.get $g)))
      (call $print_byte (i32.add (i32.const 48) (i32.load8_u (i32.const 2000)))))
    """
)


def test_runs_are_isolated(engine: WasmEngine) -> None:
    assert [engine.run(COUNTING_GUEST).stdout for _ in range(3)] == [b"11"] * 3


def test_compiled_module_handle_is_reusable(engine: WasmEngine) -> None:
    compiled = engine.compile(COUNTING_GUEST)
    assert compiled.has_start
    assert engine.run(compiled).stdout == b"11"
    assert engine.run(compiled).cached


def test_compiled_module_of_another_engine_is_refused(engine: WasmEngine) -> None:
    with WasmEngine(None) as other:
        foreign = other.compile(ECHO)
    with pytest.raises(InvalidRequest, match="another WasmEngine"):
        engine.run(foreign)


# ------------------------------------------------------------------ compile cache


def _fresh_module(tag: int) -> bytes:
    return wat(f'(func (export "_start") (call $print_byte (i32.const {tag})))')


def test_disk_cache_is_used_by_a_second_engine(tmp_path: Path) -> None:
    module = _fresh_module(65)
    with WasmEngine(tmp_path / "c") as first:
        assert not first.run(module).cached
        assert first.run(module).cached  # memory cache
        assert (first.stats.compiled, first.stats.memory_hits) == (1, 1)
    with WasmEngine(tmp_path / "c") as second:
        result = second.run(module)
        assert result.stdout == b"A"
        assert result.cached
        assert (second.stats.compiled, second.stats.disk_hits) == (0, 1)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "c" / "hmac.key").stat().st_mode) == 0o600
    for f in (tmp_path / "c").glob("*.cwasm"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_tampered_cache_file_is_rejected_and_recompiled(tmp_path: Path) -> None:
    module = _fresh_module(66)
    with WasmEngine(tmp_path / "c") as first:
        digest = first.compile(module).sha256
    cached = tmp_path / "c" / f"{digest}.cwasm"
    blob = bytearray(cached.read_bytes())
    blob[-100] ^= 0xFF
    cached.write_bytes(bytes(blob))
    with WasmEngine(tmp_path / "c") as second:
        assert second.run(module).stdout == b"B"
        assert (second.stats.disk_rejected, second.stats.compiled) == (1, 1)
    with WasmEngine(tmp_path / "c") as third:  # the recompiled file is valid again
        assert third.run(module).stdout == b"B"
        assert (third.stats.disk_hits, third.stats.compiled) == (1, 0)


def test_cache_file_from_another_key_is_rejected(tmp_path: Path) -> None:
    module = _fresh_module(67)
    with WasmEngine(tmp_path / "a") as a:
        digest = a.compile(module).sha256
    with WasmEngine(tmp_path / "b") as b:
        b.compile(ECHO)
    planted = (tmp_path / "a" / f"{digest}.cwasm").read_bytes()
    (tmp_path / "b" / f"{digest}.cwasm").write_bytes(planted)
    with WasmEngine(tmp_path / "b") as b:
        assert b.run(module).stdout == b"C"
        assert (b.stats.disk_rejected, b.stats.compiled) == (1, 1)


def test_unsafe_cache_dirs_are_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(WasmCacheUnsafe, match="mode"):
        WasmEngine(open_dir)
    with WasmEngine(tmp_path / "ok"):
        pass
    (tmp_path / "ok" / "hmac.key").chmod(0o644)
    with pytest.raises(WasmCacheUnsafe):
        WasmEngine(tmp_path / "ok")


def test_closed_engine_refuses_work() -> None:
    eng = WasmEngine(None)
    compiled = eng.compile(ECHO)
    eng.close()
    eng.close()  # idempotent
    with pytest.raises(Unavailable):
        eng.run(compiled)
    with pytest.raises(Unavailable):
        eng.compile(ECHO)


def test_memory_cache_is_bounded(tmp_path: Path) -> None:
    with WasmEngine(None, memory_cache_size=2) as eng:
        modules = [_fresh_module(70 + i) for i in range(3)]
        for m in modules:
            eng.compile(m)
        eng.compile(modules[0])  # evicted: compiled again
        assert eng.stats.compiled == 4


# ------------------------------------------------------------------ threads


def test_concurrent_runs_on_four_threads(engine: WasmEngine) -> None:
    records = b'{"records":[{"id":"a","amount_cents":7},{"id":"b","amount_cents":5}]}'
    hosts = [FakeHost(), FakeHost(fail=True)]
    fail_module = command(
        "(call $print_byte (i32.sub (i32.const 0)"
        "  (call $kv_get (i32.const 1024) (i32.const 1) (i32.const 2048) (i32.const 8))))",
        imports='(import "naos" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i32)))',
    )

    def echo() -> None:
        assert engine.run(ECHO, b"ping").stdout == b"ping"

    def total() -> None:
        assert engine.run(SUM, records).stdout == b'{"total_cents":12,"count":2}\n'

    def counter() -> None:
        assert engine.run(KV_COUNTER, grants=ALL_NAOS, host=hosts[0]).exit_code == 0

    def hostile() -> None:
        assert list(engine.run(fail_module, grants={"kv_get"}, host=hosts[1]).stdout) == [5]
        with pytest.raises(WasmOutOfFuel):
            engine.run(INFINITE_LOOP, limits=Limits(fuel=2_000_000))
        with pytest.raises(WasmTimeout):
            engine.run(INFINITE_LOOP, limits=Limits(fuel=10**13, timeout_ms=20))

    errors: list[BaseException] = []

    def worker(job: Callable[[], None]) -> None:
        try:
            for _ in range(25):
                job()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(j,)) for j in (echo, total, counter,
                                                                   hostile)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert hosts[0].kv == {b"counter": b"25"}


# ------------------------------------------------------------------ process exit

EXIT_RIGHT_AFTER_A_RUN = """
import sys
from actors.wasm import WasmEngine
engine = WasmEngine(None)
result = engine.run(open(sys.argv[1], "rb").read(), b"x" * 3_000_000)
assert len(result.stdout) == 3_000_000
"""


def test_exiting_right_after_a_run_does_not_panic() -> None:
    # wasmtime drops output callbacks on its own threads just after a run; without the
    # engine's atexit drain this panicked a tokio worker in ~1 of 5 exits.
    root = Path(__file__).resolve().parent.parent
    for _ in range(8):
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_RIGHT_AFTER_A_RUN, str(EXAMPLES / "echo.wasm")],
            cwd=root, capture_output=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(root)})
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"panicked" not in proc.stderr, proc.stderr.decode()


# ------------------------------------------------------------------ pure parts


def test_limits_are_validated() -> None:
    with pytest.raises(ConfigError):
        Limits(fuel=0)
    with pytest.raises(ConfigError):
        Limits(memory_bytes=100)
    with pytest.raises(ConfigError):
        Limits(timeout_ms=-1)
    with pytest.raises(ConfigError):
        Limits(stdout_bytes=1.5)  # type: ignore[arg-type]
    assert Limits(price_micro_usd_per_mfuel=0).price_micro_usd_per_mfuel == 0


@pytest.mark.parametrize(
    ("fuel", "price", "cost"),
    [(0, 5, 0), (1, 1, 1), (1_000_000, 1, 1), (1_000_001, 1, 2), (3_500_000, 2, 7),
     (10**12, 0, 0)],
)
def test_price_rounds_up_in_micro_dollars(fuel: int, price: int, cost: int) -> None:
    assert price_micro_usd(fuel, price) == cost


def test_run_errors_pickle_with_their_result() -> None:
    result = RunResult(0, b"o", b"e", 10, 1, 65536, 0.5, True)
    err = WasmTrap("guest trapped", result, "unreachable")
    back = pickle.loads(pickle.dumps(err))
    assert (back.result, back.trap_code, back.code) == (result, "unreachable", "wasm_trap")
    assert isinstance(back, NaosError)
    timeout = pickle.loads(pickle.dumps(WasmTimeout("slow", result)))
    assert timeout.result == result


def test_an_engine_without_reservations_runs_under_an_address_space_limit() -> None:
    """A confined agent runs under RLIMIT_AS (memory_mb, 1 GiB by default): with
    wasmtime's default GiB reservations every instantiation failed there."""
    code = f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from actors.wasm import WasmEngine
data = open({str(EXAMPLES / "echo.wasm")!r}, "rb").read()
print(WasmEngine(None, reserve_address_space=False).run(data, b"fits").stdout.decode())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, "fits"), out.stderr
