"""``naosctl llm`` through the real daemon: a remote LLM (a fake
OpenAI-compatible server on 127.0.0.1), no LLM at all, and the embedded
local LLM (the real llama.cpp server with SmolLM2, extra ``local-llm``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from fake_openai import error, ok, serve_fake_openai
from harness import Naosd, clean_env, reap, start_naosd, wait_gone

from naosd.broker.llm.local import find_model, server_installed
from naosd.broker.llm.wire import prompt_token_bound
from naosd.runtime.procs import is_descendant, process_alive

pytestmark = pytest.mark.e2e
KEY = "sk-e2e-never-shown-42"


def env_for(base: Path, **env: str) -> dict[str, str]:
    return clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                     XDG_CONFIG_HOME=str(base / "xdg-config"), **env)


def finish(d: Naosd) -> None:
    survivors = reap(d)
    assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


def audit_types(d: Naosd) -> list[dict]:
    return json.loads(d.ctl("audit", "tail", "-n", "1000", "--json").stdout)


async def test_llm_ask_through_daemon_against_remote(base):
    async with serve_fake_openai() as fake:
        fake.script = [error(429, "rate_limit_exceeded", **{"Retry-After": "0"}),
                       ok("four", prompt_tokens=2000, completion_tokens=500)]
        env = env_for(base, NAOS_LLM_BASE_URL=fake.url, NAOS_LLM_MODEL="fake-1",
                      NAOS_LLM_API_KEY=KEY, NAOS_LLM_PRICE_INPUT_PER_1K="100",
                      NAOS_LLM_PRICE_OUTPUT_PER_1K="400")
        d = await asyncio.to_thread(start_naosd, base, env=env)
        try:
            status = await asyncio.to_thread(d.ctl, "llm", "status", "--json")
            asked = await asyncio.to_thread(d.ctl, "llm", "ask", "2+2?", "--json")
            text = await asyncio.to_thread(d.ctl, "llm", "ask", "again")
            fake.script = [error(429, "insufficient_quota", "out of credits")]
            quota = await asyncio.to_thread(d.ctl, "llm", "ask", "more")
            shown = await asyncio.to_thread(d.ctl, "config", "show", "--json")
            rows = await asyncio.to_thread(audit_types, d)
        finally:
            await asyncio.to_thread(finish, d)
    assert json.loads(status.stdout)["kind"] == "remote"
    assert json.loads(status.stdout)["api_key_set"] is True
    result = json.loads(asked.stdout)
    assert (result["text"], result["attempts"], result["estimated"]) == ("four", 2, False)
    assert result["cost_micro"] == 200 + 200  # 2K x 100 + 0.5K x 400
    assert text.returncode == 0 and "four" not in text.stdout and "hello" in text.stdout
    assert quota.returncode == 1 and "out of credits" in quota.stderr
    assert fake.headers[0]["Authorization"] == f"Bearer {KEY}"
    llm_rows = [r for r in rows if r["type"].startswith("llm.")]
    assert [r["type"] for r in llm_rows] == ["llm.complete", "llm.complete", "llm.error"]
    assert llm_rows[0]["detail"]["cost_micro"] == 400
    assert llm_rows[2]["detail"]["code"] == "llm_quota_exceeded"
    for blob in (shown.stdout, json.dumps(rows), d.log()):
        assert KEY not in blob


def test_no_llm_configured_is_a_clear_error(base):
    d = start_naosd(base, env=env_for(base, NAOS_LLM_LOCAL="false"))
    try:
        r = d.ctl("llm", "ask", "hello")
        status = d.ctl("llm", "status")
        empty = d.ctl("llm", "ask", "   ")
    finally:
        finish(d)
    assert r.returncode == 6 and "no LLM" in r.stderr and "llm.local is off" in r.stderr
    assert "no LLM" in status.stdout
    assert empty.returncode == 2 and "prompt" in empty.stderr


LOCAL_MISSING = not server_installed() or find_model() is None


@pytest.mark.skipif(LOCAL_MISSING, reason="extra local-llm not installed "
                    "(pip install -e '.[local-llm]'; .ci/run installs it)")
@pytest.mark.timeout(600)  # loads a model: slow on a loaded CI machine
def test_local_llm_end_to_end_and_killed_with_naosd(base):
    # What llama_cpp.server would read from the environment must not reach it:
    # HOST would move it off 127.0.0.1, API_KEY would lock naosd out.
    d = start_naosd(base, env=env_for(base, NAOS_LLM_PRICE_INPUT_PER_1K="1000",
                                      NAOS_LLM_PRICE_OUTPUT_PER_1K="1000", HOST="0.0.0.0",
                                      PORT="1", API_KEY="not-for-the-local-llm"))
    try:
        before = json.loads(d.ctl("llm", "status", "--json").stdout)
        r = d.ctl("--timeout", "280", "llm", "ask", "What is the capital of France?",
                  "--max-tokens", "24", "--json", timeout=300)
        assert r.returncode == 0, r.stderr + d.log()
        status = json.loads(d.ctl("llm", "status", "--json").stdout)
        server = status["pid"]
        assert is_descendant(server, d.pid)
        d.remember_tree()
        again = json.loads(d.ctl("--timeout", "280", "llm", "ask", "Say hi.", "--max-tokens",
                                 "8", "--json", timeout=300).stdout)
        d.stop(signal.SIGKILL)  # no clean stop: the kernel must take the server down
    finally:
        finish(d)
    assert before["kind"] == "local" and not before["running"]
    result = json.loads(r.stdout)
    assert result["text"].strip() and result["model"] == "smollm2-135m-instruct"
    # charged on the usage the server counted, not on byte-based upper bounds
    assert not result["estimated"] and 1 <= result["output_tokens"] <= 24
    assert 0 < result["input_tokens"] < prompt_token_bound("What is the capital of France?")
    assert result["cost_micro"] == result["input_tokens"] + result["output_tokens"]
    assert status["running"] and status["starts"] == 1 and status["state"] == "ready"
    assert again["text"].strip() and again["output_tokens"] <= 8
    assert not process_alive(server)
    assert_extra_buffer_types_off((d.state_dir / "local-llm.log").read_text())


def assert_extra_buffer_types_off(log: str) -> None:
    """llama.cpp's load log names the buffer types it used: with the launcher's
    use_extra_bufts=false neither AMX nor CPU_REPACK is even considered (a plain
    load mentions CPU_REPACK: test_llm_launcher's positive control)."""
    assert "naos launcher: loading" in log and "use_extra_bufts=false" in log
    assert "CPU_Mapped model buffer size" in log
    assert "CPU_REPACK" not in log and "AMX" not in log


@pytest.mark.skipif(LOCAL_MISSING, reason="extra local-llm not installed "
                    "(pip install -e '.[local-llm]'; .ci/run installs it)")
@pytest.mark.timeout(600)  # loads a model: slow on a loaded CI machine
def test_local_llm_restarted_after_exit_and_stopped_cleanly(base):
    d = start_naosd(base, env=env_for(base))
    try:
        ask = ("--timeout", "280", "llm", "ask", "Hi", "--max-tokens", "4", "--json")
        assert d.ctl(*ask, timeout=300).returncode == 0
        first = json.loads(d.ctl("llm", "status", "--json").stdout)["pid"]
        os.kill(first, signal.SIGKILL)
        assert wait_gone([first], 30) == []
        r = d.ctl(*ask, timeout=300)
        assert r.returncode == 0, r.stderr + d.log()
        status = json.loads(d.ctl("llm", "status", "--json").stdout)
        second = status["pid"]
        d.remember_tree()
        code = d.stop()  # SIGTERM: naosd stops the server itself
    finally:
        finish(d)
    assert status["starts"] == 2 and second != first and status["crashes"] == 1
    assert status["last_exit"] == "signal SIGKILL"
    assert code == 0 and not process_alive(second)
    assert "local LLM exited (signal SIGKILL)" in d.log() and "local LLM stopped" in d.log()
