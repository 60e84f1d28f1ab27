"""The ``naos`` channel functions at the engine's boundary (docs/wasm-abi.md):
grants, bounds, size caps, the held reply, fuel and the run's deadline, with
a guest from tests/wasm_modules.py and a HostServices that records what it
was asked.  Every hostile call ends in its code; nothing reaches the host
from a refused call; the engine keeps serving.  The same functions through
the real daemon are in tests/test_wasm_agent_api_e2e.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import wasmtime
from wasm_modules import channel_guest_wat

from actors.domain.definitions import AgentDef
from actors.domain.wasm_abi import CHANNEL_FUNCTIONS, HOST_FUNCTIONS, WASM_GRANTS
from actors.wasm import Limits, WasmEngine
from naosd.errors import InvalidRequest, WasmImportDenied, WasmTimeout, WasmTrap

CHAT = frozenset({"llm_chat"})
GUEST = bytes(wasmtime.wat2wasm(channel_guest_wat(["llm_chat"])))


class RecordingHost:
    """Answers every channel call with what it was asked (a HostServices)."""

    def __init__(self, reply: Any = None, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, dict[str, Any], float]] = []
        self.reply = reply
        self.delay_s = delay_s

    def kv_get(self, key: bytes) -> bytes | None:
        return None

    def kv_set(self, key: bytes, value: bytes) -> None:
        pass

    def log(self, level: int, text: str) -> None:
        pass

    def call(self, name: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.calls.append((name, request, timeout_s))
        time.sleep(self.delay_s)
        return {"ok": request if self.reply is None else self.reply}


@pytest.fixture(scope="module")
def engine() -> Iterator[WasmEngine]:
    with WasmEngine(None) as eng:
        yield eng


def run(engine: WasmEngine, mode: int, request: Any, host: RecordingHost, *,
        limits: Limits | None = None, module: bytes = GUEST) -> Any:
    stdin = json.dumps([mode, request]).encode()
    result = engine.run(module, stdin, grants=CHAT, host=host, limits=limits)
    return json.loads(result.stdout)


def test_a_call_hands_the_request_to_the_host_and_the_reply_to_the_guest(engine):
    host = RecordingHost()
    request = {"messages": [{"role": "user", "content": "hi ✓"}], "max_tokens": 5}
    assert run(engine, 0, request, host) == {"ok": request}
    [(name, seen, timeout_s)] = host.calls
    assert (name, seen) == ("llm_chat", request)
    assert 0 < timeout_s <= Limits().timeout_ms / 1000  # bounded by the run's deadline


@pytest.mark.parametrize(("mode", "request_", "code"), [
    (6, {"a": 1}, -2),  # request pointer outside the memory: NAOS_FAULT
    (7, {"a": 1}, -3),  # a 2 GiB request: NAOS_TOO_LARGE, before it is read
    (8, {"a": 1}, -2),  # an output buffer past the memory's end: NAOS_FAULT
    (0, "not an object", -4),  # JSON, but not an object: NAOS_INVALID
    (0, [1, 2], -4),
])
def test_bad_pointers_lengths_and_requests_never_reach_the_host(engine, mode, request_, code):
    host = RecordingHost()
    assert run(engine, mode, request_, host) == {"rc": code}
    assert host.calls == []  # a refused call has no effect


def test_bytes_that_are_not_strict_json_or_not_utf8_are_invalid(engine):
    host = RecordingHost()
    for raw in (b"[0, {nope}]", b"[0, \xff\xfe{}]", b"[0, " + b"[" * 100_000 + b"]",
                b'[0, {"timeout": NaN}]', b'[0, {"t": -Infinity}]'):
        result = engine.run(GUEST, raw, grants=CHAT, host=host)
        assert json.loads(result.stdout) == {"rc": -4}, raw[:20]
    assert host.calls == []


def test_a_request_over_call_bytes_is_refused_unread(engine):
    host = RecordingHost()
    big = {"text": "x" * 5000}
    assert run(engine, 0, big, host, limits=Limits(call_bytes=4096)) == {"rc": -3}
    assert run(engine, 0, big, host, limits=Limits(call_bytes=8192)) == {"ok": big}
    assert len(host.calls) == 1


def test_a_reply_larger_than_the_buffer_is_held_for_naos_reply(engine):
    host = RecordingHost()
    # mode 9: a 4-byte buffer gets nothing; the result is the reply's length and
    # naos.reply copies the held reply; the host was called once
    assert run(engine, 9, {"q": "long enough"}, host) == {"ok": {"q": "long enough"}}
    assert len(host.calls) == 1


def reply_guest(body: str) -> bytes:
    """A guest importing llm_chat as $c, reply as $r and proc_exit as $exit."""
    return bytes(wasmtime.wat2wasm(f"""(module
      (import "naos" "llm_chat" (func $c (param i32 i32 i32 i32) (result i32)))
      (import "naos" "reply" (func $r (param i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      {body})"""))


def test_naos_reply_before_any_call_is_not_found(engine):
    module = reply_guest("""
      (func (export "_start") (call $exit (i32.sub (i32.const 0)
                                              (call $r (i32.const 0) (i32.const 100)))))""")
    result = engine.run(module, b"", grants=CHAT, host=RecordingHost())
    assert result.exit_code == 1  # -NAOS_NOT_FOUND


def test_naos_reply_into_a_bad_buffer_faults_and_keeps_the_reply(engine):
    module = reply_guest("""
      (data (i32.const 0) "{}")
      (func (export "_start")
        (drop (call $c (i32.const 0) (i32.const 2) (i32.const 64) (i32.const 0)))
        (if (i32.ne (call $r (i32.const -16) (i32.const 1000)) (i32.const -2))
          (then (call $exit (i32.const 1))))
        (if (i32.ne (call $r (i32.const 65530) (i32.const 1000)) (i32.const -2))
          (then (call $exit (i32.const 2))))
        (call $exit (call $r (i32.const 64) (i32.const 1000))))""")
    host = RecordingHost()
    result = engine.run(module, b"", grants=CHAT, host=host)
    assert result.exit_code == len(b'{"ok":{}}')  # still held after the faults
    assert len(host.calls) == 1


def test_a_reply_over_reply_bytes_becomes_an_error_reply(engine):
    host = RecordingHost(reply="y" * 10_000)
    out = run(engine, 0, {}, host, limits=Limits(reply_bytes=4096))
    assert out["error"]["code"] == "wasm_reply_too_large"
    assert "reply_bytes" in out["error"]["message"]


def test_a_call_after_the_runs_deadline_is_answered_timeout_without_the_host(engine):
    host = RecordingHost(delay_s=0.4)
    module = bytes(wasmtime.wat2wasm(channel_guest_wat(["llm_chat"]).replace(
        "(call $answer (local.get $r)",
        "(local.set $r (call $f0 (local.get $req) (local.get $len) "
        "(i32.const 3145728) (i32.const 1048576)))\n    (call $answer (local.get $r)")))
    limits = Limits(timeout_ms=300)
    with pytest.raises(WasmTimeout):  # the guest runs on past its deadline
        engine.run(module, json.dumps([0, {}]).encode(), grants=CHAT, host=host,
                   limits=limits)
    assert len(host.calls) == 1  # the second call found no time left


def test_each_call_costs_fuel_for_the_bytes_it_moves(engine):
    host = RecordingHost()
    small = engine.run(GUEST, json.dumps([0, {}]).encode(), grants=CHAT, host=host)
    big = engine.run(GUEST, json.dumps([0, {"t": "z" * 50_000}]).encode(), grants=CHAT,
                     host=host)
    assert big.fuel_used - small.fuel_used >= 2 * 50_000  # read once, written once


def test_a_guest_that_traps_after_a_call_is_a_trap(engine):
    host = RecordingHost()
    with pytest.raises(WasmTrap):
        run(engine, 5, {}, host)
    assert len(host.calls) == 1


def test_ungranted_channel_functions_are_refused_by_name(engine):
    both = bytes(wasmtime.wat2wasm(channel_guest_wat(["llm_chat", "agent_ask"])))
    with pytest.raises(WasmImportDenied, match=r"naos\.agent_ask: host function not granted"):
        engine.run(both, b"[0, {}]", grants=CHAT, host=RecordingHost())
    report = engine.validate(both, grants=frozenset({"kv_get"}))
    assert report.verdict == "denied"
    assert any("naos.reply: comes with any granted channel function" in p
               for p in report.denied_imports)
    assert engine.validate(both, grants=frozenset({"llm_chat", "agent_ask"})).ok


def test_reply_is_not_a_grant_and_unknown_grants_are_refused(engine):
    with pytest.raises(InvalidRequest, match="unknown grant"):
        engine.run(GUEST, b"[0, {}]", grants=frozenset({"reply"}), host=RecordingHost())
    with pytest.raises(InvalidRequest, match="unknown grant"):
        engine.run(GUEST, b"[0, {}]", grants=frozenset({"llm_chat", "root"}),
                   host=RecordingHost())


def test_the_abi_table_lists_every_channel_function_with_four_i32s():
    assert set(CHANNEL_FUNCTIONS) <= set(WASM_GRANTS)
    assert all(HOST_FUNCTIONS[n] == (4, 1) for n in CHANNEL_FUNCTIONS)
    assert "reply" in HOST_FUNCTIONS and "reply" not in WASM_GRANTS


def test_definitions_take_wasm_grants_only_for_wasm_agents():
    wasm = AgentDef("w", "wasm", "/x.wasm", execution={"grants": ["llm_chat", "state_get"]})
    assert wasm.validated().wasm_grants == ["llm_chat", "state_get"]
    with pytest.raises(InvalidRequest, match="llm_chat are WASM host functions"):
        AgentDef("p", "python", "/x.py", execution={"grants": ["llm_chat"]}).validated()
    with pytest.raises(InvalidRequest, match="grants must be a list of"):
        AgentDef("w", "wasm", "/x.wasm", execution={"grants": ["reply"]}).validated()
