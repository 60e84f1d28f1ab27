"""WASM engine benchmarks: figures and ratios against floors measured in the same run.

    python bench/bench_wasm.py [--n 2000]

1. Raw wasmtime (no naos code, no fuel, no epoch): fresh Store + WASI (stdin bytes,
   stdout callback) + instantiate + ``_start`` of examples/wasm/echo.wasm: the floor.
   Then ``WasmEngine.run`` of the same module (memory-cached), and the ratio.
2. Cold compile vs cached start: a fresh compile, a memory-cache hit, a disk-cache
   load (HMAC check + ``Module.deserialize``), for the C guest sum.wasm and a
   synthetic ~1 MB module.
3. Fuel-metering overhead on a compute loop: raw wasmtime with and without
   ``consume_fuel``, and the naos engine.
4. Runs/s of the naos engine (echo, cached) with 1, 2 and 4 threads.

No assertions: this prints numbers. Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import wasmtime
from benchlib import Daemon, interleaved, line, pct, timed
from wasmtime import _ffi as wasmtime_ffi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.wasm import Limits, WasmEngine  # noqa: E402
from naosctl.client import Client  # noqa: E402

EXAMPLES = ROOT / "examples" / "wasm"
ECHO = (EXAMPLES / "echo.wasm").read_bytes()
SUM = (EXAMPLES / "sum.wasm").read_bytes()
LOOP_ITERATIONS = 20_000_000
LOOP_BODIES = {
    "mul/xor loop": "(local.set $acc (i32.xor (i32.mul (local.get $acc) (i32.const 31)) "
                    "(local.get $i)))",
    "empty loop": "",
    "call-heavy loop": "(local.set $acc (call $step (local.get $acc) (local.get $i)))",
}


def compute_module(body: str) -> bytes:
    return bytes(wasmtime.wat2wasm(f"""
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $step (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "_start")
    (local $i i32) (local $acc i32)
    (loop $l
      {body}
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {LOOP_ITERATIONS}))))
    (call $exit (i32.and (local.get $acc) (i32.const 63)))))
"""))


def big_module(n_funcs: int = 6000) -> bytes:
    body = "".join(
        f"(func $f{i} (param i32) (result i32) (i32.add (i32.mul (local.get 0) "
        f"(i32.const {i})) (i32.const {i * 7})))" for i in range(n_funcs))
    calls = "".join(f"(drop (call $f{i} (i32.const 1)))" for i in range(0, n_funcs, 50))
    return bytes(wasmtime.wat2wasm(
        f'(module (memory (export "memory") 1) {body} (func (export "_start") {calls}))'))


# ----------------------------------------------------------------- raw wasmtime


class RawRunner:
    """The floor: what a bare wasmtime-py WASI command run costs."""

    def __init__(self, module_bytes: bytes, *, fuel: bool = False) -> None:
        config = wasmtime.Config()
        config.consume_fuel = fuel
        self.fuel = fuel
        self.engine = wasmtime.Engine(config)
        self.module = wasmtime.Module(self.engine, module_bytes)
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()

    def run(self, stdin: bytes) -> tuple[int, bytes]:
        chunks: list[bytes] = []
        store = wasmtime.Store(self.engine)
        try:
            if self.fuel:
                store.set_fuel(2**62)
            wasi = wasmtime.WasiConfig()
            set_stdin(wasi, stdin)
            wasi.stdout_custom = chunks.append
            store.set_wasi(wasi)
            instance = self.linker.instantiate(store, self.module)
            start: Any = instance.exports(store)["_start"]
            code = 0
            try:
                start(store)
            except wasmtime.ExitTrap as exc:
                code = exc.code
            return code, b"".join(chunks)
        finally:
            store.close()


def set_stdin(wasi: Any, data: bytes) -> None:
    vec = wasmtime_ffi.wasm_byte_vec_t()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    wasmtime_ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buf)
    wasmtime_ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))


# ----------------------------------------------------------------- sections


def bench_run_floor(n: int) -> None:
    print("1. one WASI command run of echo.wasm (64 bytes in, 64 out)")
    payload = b"x" * 64
    raw = RawRunner(ECHO)
    assert raw.run(payload)[1] == payload
    with WasmEngine(None) as eng:
        compiled = eng.compile(ECHO)
        t = interleaved({
            "raw": functools.partial(raw.run, payload),
            "bytes": functools.partial(eng.run, ECHO, payload),
            "handle": functools.partial(eng.run, compiled, payload),
        }, n)
    floor = pct(t["raw"], 0.5)
    print(line("raw wasmtime: Store+WASI+instantiate+_start", t["raw"]))
    print(line("naos WasmEngine.run(bytes) (sha256 + LRU hit)", t["bytes"], floor))
    print(line("naos WasmEngine.run(CompiledModule)", t["handle"], floor))


def bench_compile(n: int) -> None:
    print("\n2. cold compile vs cached start")
    for name, module in (("sum.wasm (C, 27 KB)", SUM), ("synthetic", big_module())):
        label = f"{name} {len(module) // 1024} KB" if name == "synthetic" else name
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "cache"
            cold = []
            for _ in range(max(3, n // 200)):
                with WasmEngine(None) as eng:
                    t0 = time.perf_counter()
                    eng.compile(module)
                    cold.append((time.perf_counter() - t0) * 1e6)
            with WasmEngine(cache) as eng:
                eng.compile(module)  # fills the disk cache
                mem = timed(functools.partial(eng.compile, module), n, warmup=5)
            disk = []
            for _ in range(max(3, n // 20)):
                with WasmEngine(cache) as eng:
                    t0 = time.perf_counter()
                    eng.compile(module)
                    disk.append((time.perf_counter() - t0) * 1e6)
                    assert eng.stats.disk_hits == 1
        print(line(f"{label}: cold compile", cold))
        print(line(f"{label}: disk cache (HMAC + deserialize)", disk))
        print(line(f"{label}: memory cache (sha256 + LRU)", mem))


def bench_fuel(n: int) -> None:
    print(f"\n3. fuel metering on compute loops ({LOOP_ITERATIONS:,} iterations)")
    reps = max(5, n // 100)
    limits = Limits(fuel=10**12, timeout_ms=60_000)
    with WasmEngine(None) as eng:
        for name, body in LOOP_BODIES.items():
            module = compute_module(body)
            off, on = RawRunner(module), RawRunner(module, fuel=True)
            fuel = eng.run(module, limits=limits).fuel_used
            t = interleaved({
                "off": functools.partial(off.run, b""),
                "on": functools.partial(on.run, b""),
                "naos": functools.partial(eng.run, module, limits=limits),
            }, reps, warmup=1)
            base = pct(t["off"], 0.5)
            print(line(f"{name}: raw wasmtime, fuel off", t["off"]))
            print(line(f"{name}: raw wasmtime, fuel on", t["on"], base))
            print(line(f"{name}: naos engine (fuel + epoch)", t["naos"], base))
            print(f"{name + ': fuel per iteration':<46} {fuel / LOOP_ITERATIONS:.1f}")


def bench_threads(n: int) -> None:
    print("\n4. naos engine runs/s, echo.wasm cached, N threads (this machine: 2 cores)")
    payload = b"x" * 64
    with WasmEngine(None) as eng:
        compiled = eng.compile(ECHO)
        eng.run(compiled, payload)
        single = None
        for threads in (1, 2, 4):
            per_thread = max(200, n // threads)
            rate = runs_per_second(eng, compiled, payload, threads, per_thread)
            single = single or rate
            print(f"{threads} thread(s){'':<37} {rate:9.0f} runs/s  {rate / single:5.2f}x")


def runs_per_second(eng: WasmEngine, compiled: Any, payload: bytes, threads: int,
                    per_thread: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            eng.run(compiled, payload)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return threads * per_thread / (time.perf_counter() - t0)


def bench_through_daemon(n: int) -> None:
    """The same echo run as a naosd request: client -> socket -> bridge ->
    sandbox pool -> worker and back, against the raw floor plus the cost of
    one actor hop through the same daemon (actors.ping)."""
    import shutil

    print("\n5. echo.wasm through naosd (client library -> sandbox pool -> worker)")
    payload = b"x" * 64
    raw = RawRunner(ECHO)
    base = Path(tempfile.mkdtemp(prefix="naos-bw-", dir="/tmp"))
    daemon = Daemon(base)
    try:
        with Client(daemon.sock) as c:
            t = interleaved({
                "raw": functools.partial(raw.run, payload),
                "hop": functools.partial(c.call, "actors.ping"),
                "naos": functools.partial(c.call, "wasm.run", module=ECHO, input=payload),
            }, n)
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
    floor = pct(t["raw"], 0.5) + pct(t["hop"], 0.5)
    print(line("raw wasmtime run", t["raw"]))
    print(line("one actor hop through naosd (actors.ping)", t["hop"]))
    print(line("naosctl-level wasm.run (cached module)", t["naos"], floor)
          + "  (floor = raw run + one hop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per timing")
    args = parser.parse_args()
    print(f"wasmtime-py {wasmtime.__name__} {_version()}, Python {sys.version.split()[0]}\n")
    bench_run_floor(args.n)
    bench_compile(args.n)
    bench_fuel(args.n)
    bench_threads(args.n)
    bench_through_daemon(min(args.n, 500))


def _version() -> str:
    import importlib.metadata

    return importlib.metadata.version("wasmtime")


if __name__ == "__main__":
    main()
