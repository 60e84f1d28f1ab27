"""The client library's asyncio shell, events, shell completion and the
systemd notify protocol, against the real daemon."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import pytest
from harness import Naosd, clean_env, naosctl, reap, start_naosd

from naosctl.client import AsyncClient
from naosd.errors import DaemonNotRunning, MethodNotFound

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
