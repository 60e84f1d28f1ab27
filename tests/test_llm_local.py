"""The embedded local LLM's life with a stand-in server process
(tests/local_llm_stand_in.py, set as ``llm.local_command``): through the real
daemon and the real naosctl, slow starts waited for within each caller's own
deadline, crashes named as crashes, backoff, giving up, ``llm restart``; and
``LocalLlm`` itself for a restart or a stop while callers wait."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Naosd, clean_env, reap, start_naosd

from naosctl.client import Client
from naosd.broker.llm.health import Phase
from naosd.broker.llm.local import LocalLlm
from naosd.errors import InvalidRequest, LlmUnavailable
from naosd.runtime.procs import process_alive

pytestmark = pytest.mark.e2e
STAND_IN = Path(__file__).with_name("local_llm_stand_in.py")


@pytest.fixture
def folder(base: Path) -> Path:
    """The stand-in's model file and the files that steer it."""
    path = base / "llm"
    path.mkdir()
    (path / "model.gguf").write_bytes(b"not a model")
    return path


def start(base: Path, folder: Path, **env: str) -> Naosd:
    return start_naosd(base, env=clean_env(
        XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
        XDG_CONFIG_HOME=str(base / "xdg-config"),
        NAOS_LLM_LOCAL_COMMAND=f"{sys.executable} {STAND_IN}",
        NAOS_LLM_LOCAL_MODEL=str(folder / "model.gguf"),
        NAOS_LLM_PRICE_INPUT_PER_1K="1000", NAOS_LLM_PRICE_OUTPUT_PER_1K="1000", **env))


def finish(d: Naosd) -> None:
    survivors = reap(d)
    assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


def starts(folder: Path) -> list[float]:
    path = folder / "starts"
    lines = path.read_text().splitlines() if path.exists() else []
    return [float(line.split()[0]) for line in lines]


def status(d: Naosd) -> dict:
    return json.loads(d.ctl("llm", "status", "--json").stdout)


def ask(d: Naosd, *, timeout: float = 60) -> tuple[int, str, str]:
    out = d.ctl("--timeout", str(timeout), "llm", "ask", "hi", "--json", timeout=timeout + 30)
    return out.returncode, out.stdout, out.stderr


def test_first_calls_share_one_slow_start_within_their_own_deadlines(base, folder):
    """daemon.request_timeout is 2 s and llm.timeout 1 s; the callers wait up to
    60 s, the start takes longer than 2 s and each completion 2 s: they are
    served, by one start."""
    (folder / "gate").touch()
    (folder / "slow").touch()
    d = start(base, folder, NAOS_REQUEST_TIMEOUT="2", NAOS_LLM_TIMEOUT="1")
    try:
        with ThreadPoolExecutor(4) as pool:
            patient = [pool.submit(ask, d) for _ in range(2)]
            broker = pool.submit(d.ctl, "--timeout", "60", "broker", "execute",
                                 "write a haiku about rust", "--json", timeout=90)
            hasty = ask(d, timeout=10)  # gives up, with the reason, while the gate holds
            waiting = status(d)
            (folder / "gate").unlink()
            served = [f.result() for f in patient]
            executed = broker.result()
        after = status(d)
        with Client(d.socket) as client, pytest.raises(InvalidRequest, match="timeout"):
            client.call("llm.complete", prompt="hi", timeout=0)
    finally:
        finish(d)
    code, _, err = hasty
    assert code == 1 and "the local LLM is still starting (" in err, err
    assert f"s so far; see {d.state_dir / 'local-llm.log'})" in err
    assert waiting["state"] == "starting" and waiting["running"], waiting
    for code, out, err in served:
        assert code == 0, err + d.log()
        result = json.loads(out)
        # charged on the server's usage, not on byte estimates
        assert (result["text"], result["estimated"]) == ("stand-in says hi", False)
        assert (result["input_tokens"], result["output_tokens"], result["cost_micro"]) \
            == (11, 5, 16)
    assert executed.returncode == 0, executed.stderr + d.log()
    task = json.loads(executed.stdout)
    assert (task["route"], task["output"], task["estimated"], task["cost_micro"]) \
        == ("llm", "stand-in says hi", False, 16)
    assert len(starts(folder)) == 1 and after["starts"] == 1 and after["state"] == "ready"


def test_a_crashing_server_backs_off_then_stays_down_until_restart(base, folder):
    (folder / "crash").touch()
    d = start(base, folder)
    log = d.state_dir / "local-llm.log"
    try:
        crashes = [ask(d) for _ in range(3)]
        crashed = status(d)
        shown = d.ctl("llm", "status").stdout
        refused = ask(d)
        refused_starts = len(starts(folder))
        (folder / "crash").unlink()
        restarted = d.ctl("llm", "restart", "--json")
        healed = ask(d)
        audit = json.loads(d.ctl("audit", "tail", "-n", "100", "--type", "llm.error",
                                 "--json").stdout)
    finally:
        finish(d)
    for code, _, err in crashes:
        assert code == 1, err
        assert f"the local LLM crashed (signal SIGSEGV) during this request - see {log}" \
            in err
        assert "transfer" not in err.lower() and "payload" not in err.lower(), err
    times = starts(folder)
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 2.0  # 1 s, then 2 s
    assert (crashed["state"], crashed["last_exit"], crashed["crashes"], crashed["log"]) \
        == ("crashed", "signal SIGSEGV", 3, str(log))
    assert "crashed (signal SIGSEGV)" in shown and "naosctl llm restart" in shown
    code, _, err = refused
    assert code == 1 and "is not restarted until `naosctl llm restart`" in err, err
    assert refused_starts == 3  # refused without starting it again
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(restarted.stdout)["crashes"] == 0
    code, out, err = healed
    assert code == 0 and json.loads(out)["text"] == "stand-in says hi", err + d.log()
    assert [r["detail"]["code"] for r in audit] == ["llm_crashed"] * 4
    assert "local LLM exited (signal SIGSEGV)" in d.log()


def test_a_server_that_cannot_start_is_reported_with_its_log(base, folder):
    (folder / "fail").touch()
    d = start(base, folder)
    try:
        code, _, err = ask(d)
        after = status(d)
        remote = d.ctl("llm", "restart")
    finally:
        finish(d)
    assert code == 1 and "the local LLM died while starting (exit code 3)" in err, err
    assert "cannot load the model (told to fail)" in err
    assert (after["state"], after["last_exit"], after["crashes"]) == ("backoff", "exit code 3", 1)
    assert remote.returncode == 0  # restart of a local LLM in backoff: allowed


def test_restart_is_refused_for_a_remote_llm(base):
    d = start_naosd(base, env=clean_env(
        XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
        XDG_CONFIG_HOME=str(base / "xdg-config"), NAOS_LLM_BASE_URL="http://127.0.0.1:9/v1"))
    try:
        out = d.ctl("llm", "restart")
    finally:
        finish(d)
    assert out.returncode == 1 and "remote" in out.stderr, out.stderr


# -- LocalLlm in this process, with the same stand-in -------------------------------------


def local_llm(folder: Path, base: Path) -> LocalLlm:
    return LocalLlm(folder / "model.gguf", base / "local-llm.log",
                    command=(sys.executable, str(STAND_IN)))


async def wait_for_start(folder: Path, count: int) -> None:
    while len(starts(folder)) < count:  # noqa: ASYNC110 - another process writes the file
        await asyncio.sleep(0.05)


async def test_a_restart_while_callers_wait_serves_them_from_the_new_start(base, folder):
    (folder / "gate").touch()
    llm = local_llm(folder, base)
    try:
        waiting = asyncio.create_task(llm.ensure(time.monotonic() + 60))
        await wait_for_start(folder, 1)
        await llm.restart()  # cancels the first start; the caller must not see that
        await wait_for_start(folder, 2)
        (folder / "gate").unlink()
        server = await waiting
        assert llm.health.phase is Phase.READY and llm.health.starts == 2
        assert server is llm.server and llm.running
    finally:
        await llm.aclose()
    assert not process_alive(server.pid) and llm.health.crashes_total == 0


async def test_callers_still_waiting_when_naosd_stops_are_refused(base, folder):
    (folder / "gate").touch()
    llm = local_llm(folder, base)
    waiting = asyncio.create_task(llm.ensure(time.monotonic() + 60))
    await wait_for_start(folder, 1)
    pid = int((folder / "starts").read_text().split()[1])
    await llm.aclose()
    with pytest.raises(LlmUnavailable, match="naosd is stopping"):
        await waiting
    assert not process_alive(pid) and len(starts(folder)) == 1
