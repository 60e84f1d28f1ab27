"""The client library's asyncio shell, events, shell completion and the
systemd notify protocol, against the real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest
from harness import Naosd, clean_env, naosctl, reap, start_naosd

from naosctl.client import AsyncClient, Client
from naosd.errors import BudgetExceeded, DaemonNotRunning, MethodNotFound, NoRoute, TrustDenied

pytestmark = pytest.mark.e2e


async def test_async_client_pipelines_calls_and_streams(daemon: Naosd):
    async with AsyncClient(daemon.socket) as c:
        pings = await asyncio.gather(*(c.call("ping") for _ in range(50)))
        assert {p["pid"] for p in pings} == {daemon.pid}
        status, tree = await asyncio.gather(c.call("status"), c.call("supervisor.status"))
        assert status["pid"] == daemon.pid and tree["name"] == "root"
        rows = [row async for row in c.stream("audit.tail", n=3)]
        assert 1 <= len(rows) <= 3
        with pytest.raises(MethodNotFound):
            await c.call("nope")
        assert (await c.call("ping"))["pong"] is True  # still usable after an error


async def test_async_client_names_the_socket_when_not_running(base: Path):
    with pytest.raises(DaemonNotRunning, match=str(base / "none")):
        await AsyncClient(base / "none").connect()


async def test_events_stream_pushes_what_happens(daemon: Naosd):
    async def first_created(stream):
        async for event in stream:  # the daemon's own start may still be audited
            if event["type"] == "agent.created":
                return event
        return None

    async with AsyncClient(daemon.socket) as c:
        stream = c.stream("events")
        first = asyncio.ensure_future(first_created(stream))
        await asyncio.sleep(0.5)
        await c.call("agent.create", name="evt", template="echo", start=False)
        event = await asyncio.wait_for(first, 15)
        assert event["agent"] == "evt"
        await stream.aclose()


def test_shell_completion_script():
    out = naosctl("completion", "bash")
    assert out.returncode == 0 and "_NAOSCTL_COMPLETE" in out.stdout


def test_naosd_speaks_sd_notify(base: Path):
    """Play systemd: READY, STATUS, periodic WATCHDOG, RELOADING then READY on
    SIGHUP, STOPPING on SIGTERM."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = base / "notify"
    notify.bind(str(path))
    notify.settimeout(15)
    env = clean_env(XDG_RUNTIME_DIR=str(base), NOTIFY_SOCKET=str(path),
                    WATCHDOG_USEC="400000")
    d = start_naosd(base, env=env)
    seen: list[str] = []

    def until(field: str) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen.extend(notify.recv(4096).decode().split("\n"))
            if any(x.startswith(field) for x in seen):
                return
        raise AssertionError(f"no {field} in {seen}")

    try:
        until("READY=1")
        assert any(x.startswith("STATUS=") for x in seen)
        assert f"MAINPID={d.pid}" in seen
        seen.clear()
        until("WATCHDOG=1")
        seen.clear()
        until("WATCHDOG=1")  # periodic
        seen.clear()
        d.proc.send_signal(signal.SIGHUP)
        until("RELOADING=1")
        assert any(x.startswith("MONOTONIC_USEC=") for x in seen)
        until("READY=1")
        seen.clear()
        d.proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert d.proc.wait(timeout=30) == 0
    finally:
        notify.close()
        d.stop()
        assert not reap(d)


def test_wasm_agent_with_bad_limits_is_refused(daemon: Naosd):
    examples = Path(__file__).resolve().parent.parent / "examples" / "wasm"
    out = daemon.ctl("create", "badlim", "--source", str(examples / "echo.wasm"), "--config",
                     json.dumps({"limits": {"bogus": 1}}))
    assert out.returncode == 2 and "bogus" in out.stderr


def test_error_codes_from_the_request_path_are_rebuilt(base: Path):
    """Codes whose classes naosctl never imported came back as RemoteError."""
    env = clean_env(XDG_RUNTIME_DIR=str(base), NAOS_LLM_LOCAL="false")  # no LLM: no route
    d = start_naosd(base, env=env)
    try:
        d.ctl("axis", "register", "ann", "--t-score", "900", "--c-score", "950", check=True)
        d.ctl("cost", "set", "ann", "--budget", "$0.000005/day", "--action", "pause",
              check=True)
        total = "total these invoices: 1, 2"  # number-total: 5 micro-dollars
        assert d.ctl("broker", "execute", total, "--agent", "ann").returncode == 0
        cases = [
            (("broker", "execute", "sha256 of: x", "--agent", "stranger"), TrustDenied,
             "not registered with the trust gate"),
            (("broker", "execute", "zzzz qqqq"), NoRoute, "no skill"),
            (("broker", "execute", total, "--agent", "ann"), BudgetExceeded, "budget"),
        ]
        with Client(d.socket) as c:
            for args, cls, text in cases:
                out = d.ctl(*args)
                assert out.returncode == cls.exit_code and text in out.stderr.lower(), out
                method, params = _as_call(args)
                with pytest.raises(cls):
                    c.call(method, **params)
    finally:
        d.stop()
        assert not reap(d)


def _as_call(args: tuple[str, ...]) -> tuple[str, dict]:
    task, agent = args[2], (args[4] if len(args) > 4 else None)
    return ("broker.execute", {"task": task, **({"agent": agent} if agent else {})})


def on_a_terminal(d: Naosd, *args: str) -> tuple[int, bytes]:
    """Run naosctl with its stdout and stderr on a pseudo-terminal (raw mode:
    the terminal adds no carriage returns of its own); what it wrote."""
    primary, secondary = os.openpty()
    tty.setraw(secondary)
    proc = subprocess.Popen([sys.executable, "-m", "naosctl", "--socket", str(d.socket),
                             *args], stdin=subprocess.DEVNULL, stdout=secondary,
                            stderr=secondary, env=d.env)
    os.close(secondary)
    chunks = []
    try:
        while select.select([primary], [], [], 60)[0]:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: naosctl exited and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        return proc.wait(timeout=60), b"".join(chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)


def test_agent_text_reaches_the_terminal_as_text_and_json_stays_exact(daemon: Naosd):
    hostile = "hi\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\rowned\x9b31m"
    assert daemon.ctl("create", "e", "--template", "echo").returncode == 0
    assert daemon.ctl("run", "e", "--input", json.dumps(hostile)).returncode == 0
    for args in (("logs", "e"), ("run", "e", "--input", json.dumps(hostile))):
        code, shown = on_a_terminal(daemon, *args)
        assert code == 0, shown
        for raw in (b"\x1b", b"\x07", b"\r", "\x9b".encode()):
            assert raw not in shown, (args, shown)
    code, shown = on_a_terminal(daemon, "logs", "e")
    assert "hi\\e]52;c;cm0gLXJmIH4=\\a\\e[2J\\rowned\\x9b31m" in shown.decode()
    lines = daemon.ctl("logs", "e", "--json").stdout.splitlines()
    assert f"echo {hostile}" in [json.loads(line)["text"] for line in lines]
