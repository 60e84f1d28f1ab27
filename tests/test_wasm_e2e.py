"""WASM through the real daemon: sandbox pool, WASM agents, limits, crashes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import wasmtime
from harness import Naosd, reap, start_naosd
from wasm_modules import many_functions

from naosctl.client import Client
from naosd.errors import NaosError

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "wasm"

SPIN = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))"""

OPEN_FILE = """(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "/etc/passwd")
  (func (export "_start")
    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 11)
                            (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0)
                            (i32.const 64)))))"""


def wat(base: Path, name: str, text: str) -> Path:
    path = base / f"{name}.wasm"
    path.write_bytes(wasmtime.wat2wasm(text))
    return path


def test_wasm_run_prints_stdout_and_json_details(daemon: Naosd):
    out = daemon.ctl("wasm", "run", str(EXAMPLES / "echo.wasm"), "--input", '{"a":1}')
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '{"a":1}'
    detail = json.loads(daemon.ctl("wasm", "run", str(EXAMPLES / "sum.wasm"), "--input",
                                   '{"records":[{"id":"a","amount_cents":1250}]}',
                                   "--json").stdout)
    assert json.loads(detail["stdout"]) == {"total_cents": 1250, "count": 1}
    assert detail["exit_code"] == 0
    assert detail["fuel_used"] > 0 and detail["cost_micro_usd"] >= 1
    assert detail["memory_peak_bytes"] > 0 and detail["wall_ms"] > 0
    rows = json.loads(daemon.ctl("audit", "tail", "--type", "wasm.run", "--json").stdout)
    assert rows and rows[-1]["detail"]["fuel"] == detail["fuel_used"]


def test_limits_and_hostile_modules_get_clear_errors(daemon: Naosd, base: Path):
    spin = wat(base, "spin", SPIN)
    fuel = daemon.ctl("wasm", "run", str(spin), "--fuel", "100000")
    assert fuel.returncode == 1 and "fuel" in fuel.stderr
    slow = daemon.ctl("wasm", "run", str(spin), "--fuel", "100000000000000", "--timeout",
                      "0.3")
    assert slow.returncode == 1 and "time" in slow.stderr.lower()
    opened = daemon.ctl("wasm", "run", str(wat(base, "open", OPEN_FILE)))
    assert opened.returncode == 1 and "exited with code" in opened.stderr
    garbage = base / "garbage.wasm"
    garbage.write_bytes(b"\0asm\x01\0\0\0garbage")
    bad = daemon.ctl("wasm", "run", str(garbage))
    assert bad.returncode == 2 and "malformed module" in bad.stderr  # wasm_invalid_module
    report = json.loads(daemon.ctl("wasm", "validate", str(EXAMPLES / "kv-counter.wasm"),
                                   "--json").stdout)
    assert report["verdict"] == "denied" and not report["ok"]
    assert any("naos.kv_set" in d for d in report["denied_imports"])
    assert daemon.ctl("wasm", "run", str(EXAMPLES / "echo.wasm"), "--input", "x").stdout == "x"


def test_wasm_agents_are_supervised_and_keep_their_kv(daemon: Naosd):
    summer = daemon.ctl("create", "summer", "--source", str(EXAMPLES / "sum.wasm"))
    assert summer.returncode == 0, summer.stderr
    out = daemon.ctl("run", "summer", "--input",
                     '{"records":[{"id":"a","amount_cents":1250}]}', "--json")
    assert json.loads(out.stdout)["output"] == {"total_cents": 1250, "count": 1}
    grants = json.dumps({"grants": ["log", "kv_get", "kv_set"]})
    assert daemon.ctl("create", "counter", "--source", str(EXAMPLES / "kv-counter.wasm"),
                      "--config", grants).returncode == 0
    assert [json.loads(daemon.ctl("run", "counter", "--input", "{}").stdout)
            for _ in range(3)] == [1, 2, 3]
    assert "counter=3" in daemon.ctl("logs", "counter").stdout
    pid = json.loads(daemon.ctl("status", "counter", "--json").stdout)["pid"]
    assert daemon.ctl("kill", "counter").returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = json.loads(daemon.ctl("status", "counter", "--json").stdout)
        if now["state"] == "running" and now["pid"] != pid:
            break
        time.sleep(0.05)
    assert json.loads(daemon.ctl("run", "counter", "--input", "{}").stdout) == 4
    ungranted = daemon.ctl("create", "nogrant", "--source", str(EXAMPLES / "kv-counter.wasm"),
                           "--timeout", "5")
    assert ungranted.returncode != 0


def test_killing_a_sandbox_worker_mid_run_fails_that_run_only(daemon: Naosd, base: Path):
    spin = wat(base, "spin", SPIN).read_bytes()
    outcome: list[BaseException | dict] = []

    def long_run() -> None:
        try:
            with Client(daemon.socket) as c:
                outcome.append(c.call("wasm.run", module=spin, fuel=10**14, timeout_ms=20_000))
        except NaosError as exc:
            outcome.append(exc)

    runner = threading.Thread(target=long_run)
    runner.start()
    time.sleep(0.5)
    daemon.remember_tree()
    with Client(daemon.socket) as c:
        killed = c.call("wasm.kill_worker", name="*")
    runner.join(30)
    assert killed["pid"]
    assert outcome and isinstance(outcome[0], NaosError)
    assert outcome[0].code == "sandbox_crashed"
    out = daemon.ctl("wasm", "run", str(EXAMPLES / "echo.wasm"), "--input", "again")
    assert out.returncode == 0 and out.stdout == "again"


def test_modules_that_compile_for_too_long_get_clear_errors(daemon: Naosd):
    """Issue 15 (5e): a 500,000-function module kept a worker compiling for a minute."""
    with Client(daemon.socket) as c:
        with pytest.raises(NaosError) as refused:
            c.call("wasm.run", module=many_functions(500_000))
        assert refused.value.code == "wasm_module_too_complex"
        with pytest.raises(NaosError) as slow:
            c.call("wasm.run", module=many_functions(20_000), compile_timeout_ms=200)
        assert slow.value.code == "wasm_compile_timeout"
        with pytest.raises(NaosError) as too_big:
            c.call("wasm.validate", module=many_functions(1), max_bytes=(16 << 20) + 1)
        assert too_big.value.code == "invalid_request"
        for _ in range(3):  # both workers serve again
            assert c.call("wasm.run", module=(EXAMPLES / "echo.wasm").read_bytes(),
                          input=b"next")["stdout"] == b"next"


def test_concurrent_runs_on_different_agents(daemon: Naosd):
    for i in range(3):
        assert daemon.ctl("create", f"s{i}", "--source", str(EXAMPLES / "sum.wasm")
                          ).returncode == 0
    results: dict[int, object] = {}

    def work(i: int) -> None:
        with Client(daemon.socket) as c:
            records = [{"id": str(k), "amount_cents": k + i} for k in range(10)]
            results[i] = [c.call("agent.run", name=f"s{i % 3}",
                                 input={"records": records})["output"] for _ in range(10)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(6):
        expected = {"total_cents": sum(k + i for k in range(10)), "count": 10}
        assert results[i] == [expected] * 10


def test_kv_survives_a_daemon_restart(daemon: Naosd):
    grants = json.dumps({"grants": ["log", "kv_get", "kv_set"]})
    daemon.ctl("create", "keeper", "--source", str(EXAMPLES / "kv-counter.wasm"), "--config",
               grants, check=True)
    daemon.ctl("run", "keeper", "--input", "{}", check=True)
    assert daemon.stop() == 0
    again = start_naosd(daemon.socket.parent, state_dir=daemon.state_dir)
    try:
        assert json.loads(again.ctl("run", "keeper", "--input", "{}").stdout) == 2
    finally:
        again.stop()
        assert not reap(again)
