"""Agent channels in process: real handler processes (``python -m naos.host``)
on a real Unix socket, naosd's channel server and agent API in the test's
event loop, with an in-memory state store and a runner that delivers to the
other channels (the middle layer: no actors, no daemon)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from naosd.agents.api import AgentApi, Caller
from naosd.agents.channels import AgentChannels, Channel
from naosd.agents.runs import AgentRuns
from naosd.errors import AgentCrashed, NaosError, NotFound, PermissionDenied, RequestTimeout
from naosd.runtime.agent_link import channel_key, open_channel
from naosd.storage import agent_runs
from naosd.storage.db import AsyncStore
from naosd.storage.group_commit import GroupCommit

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED")]


class States:
    """The agent API's state store over the real database."""

    def __init__(self, db: AsyncStore) -> None:
        self.db = db

    async def load_state(self, agent: str) -> dict[str, Any]:
        return await self.db.call(lambda s: agent_runs.load_state(s, agent))

    async def values(self, agent: str) -> dict[str, Any]:
        return await self.load_state(agent)

    async def kv_get(self, agent: str, key: str) -> bytes | None:
        def get(store: Any) -> bytes | None:
            try:
                return bytes(store.kv_get(agent, key))
            except NotFound:
                return None

        return await self.db.call(get)

    async def kv_set(self, agent: str, key: str, value: bytes) -> None:
        await self.db.call(lambda s: s.kv_set(agent, key, value))


async def never_activate(agent: str, deadline: float) -> None:
    """The test starts handlers itself: an agent that is not live stays so."""


class Definitions:
    def __init__(self) -> None:
        self.specs: dict[str, dict[str, Any]] = {}

    async def handler_spec(self, agent: str) -> dict[str, Any]:
        return self.specs[agent]


class World:
    def __init__(self, root: Path, db: AsyncStore) -> None:
        self.root = root
        self.db = db
        self.secret = secrets.token_bytes(32)
        self.key = channel_key(self.secret)
        self.states = States(db)
        self.concurrency: dict[str, int] = {}
        self.channels = AgentChannels(root / "agents.sock", self.key, self._methods,
                                      known=self._known)
        self.runner = AgentRuns(self.channels, never_activate,
                                GroupCommit(db, agent_runs.commit))
        self.definitions = Definitions()
        self.api = AgentApi(channels=self.channels, runner=self.runner, states=self.states,
                            definitions=self.definitions, chat=None, broker=None, budgets=None)
        self.procs: list[asyncio.subprocess.Process] = []

    async def _known(self, agent: str) -> int | None:
        return self.concurrency.get(agent)

    def _methods(self, channel: Channel) -> Any:
        return self.api.methods_for(channel)

    async def spawn(self, name: str, code: str, *, concurrency: int = 1,
                    key: bytes | None = None, define: bool = True
                    ) -> asyncio.subprocess.Process:
        """Do what an agent actor does: open the channel, start the host on it."""
        if define:
            self.concurrency[name] = concurrency
        source = self.root / f"{name}.py"
        source.write_text(textwrap.dedent(code))
        self.definitions.specs[name] = {"kind": "python", "source": str(source),
                                        "config": {"k": 1}, "max_concurrency": concurrency}
        sock = await asyncio.to_thread(open_channel, self.channels.path, name,
                                       key or self.key)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-m", "naos.host", "--fd", str(sock.fileno()),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env={}, pass_fds=(sock.fileno(),))
        finally:
            sock.close()  # the handler holds the only copy now
        self.procs.append(proc)
        return proc

    async def ready(self, name: str, wait_s: float = 30.0) -> Channel:
        channel = await self.channels.wait(name, time.monotonic() + wait_s)
        assert channel is not None, f"{name} never became ready"
        return channel

    async def run(self, name: str, payload: Any, wait_s: float = 20.0) -> Any:
        caller = Caller("operator", time.monotonic() + wait_s, (), {})
        return (await self.runner.run_as(name, payload, caller=caller, key=""))["output"]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="naos-ch-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
async def world(short_dir: Path) -> AsyncIterator[World]:
    db = await AsyncStore.open(short_dir / "naos.db", checkpoint=short_dir / "audit.head",
                               synchronous="normal", busy_timeout_ms=1000)
    w = World(short_dir, db)
    await w.channels.start()
    try:
        yield w
    finally:
        await w.channels.close()
        await db.close()
        for proc in w.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


ECHO = """
def handle(message, ctx):
    ctx.log("got", message)
    return {"echo": message, "name": ctx.name, "config": ctx.config}
"""

COUNTER = """
async def handle(message, ctx):
    ctx.state["seen"] = ctx.state.get("seen", 0) + 1
    return ctx.state["seen"]
"""


async def test_a_sync_handler_answers_over_its_channel(world: World) -> None:
    await world.spawn("echo", ECHO)
    channel = await world.ready("echo")
    assert await world.run("echo", {"a": 1}) == {"echo": {"a": 1}, "name": "echo",
                                                 "config": {"k": 1}}
    assert channel.pid == world.procs[0].pid


async def test_state_is_loaded_at_start_and_changes_come_back_with_the_reply(world) -> None:
    await world.db.call(lambda s: s.kv_set("counter", "seen", b"41"))
    await world.spawn("counter", COUNTER)
    await world.ready("counter")
    assert await world.run("counter", None) == 42
    assert await world.states.values("counter") == {"seen": 42}
    rows = await world.db.call(lambda s: s.audit_tail(5, type="agent.run"))
    assert rows[-1].agent == "counter" and rows[-1].detail["ok"] is True


async def test_a_handler_that_raises_crashes_and_says_why(world: World) -> None:
    proc = await world.spawn("boom", "def handle(m, ctx):\n    raise ValueError('no way')\n")
    await world.ready("boom")
    with pytest.raises(AgentCrashed, match="ValueError: no way"):
        await world.run("boom", 1)
    assert await asyncio.wait_for(proc.wait(), 10) == 70


async def test_a_handler_that_cannot_load_reports_the_error_and_exits(world: World) -> None:
    proc = await world.spawn("syn", "def handle(m, ctx)\n    return 1\n")
    assert await asyncio.wait_for(proc.wait(), 20) == 71
    assert world.channels.get("syn") is None


async def test_a_token_made_with_another_key_is_refused(world: World) -> None:
    with pytest.raises(PermissionDenied, match="bad or reused token"):
        await world.spawn("echo", ECHO, key=channel_key(secrets.token_bytes(32)))
    assert world.channels.refused == 1 and world.channels.get("echo") is None


async def test_a_replayed_hello_is_refused(world: World) -> None:
    """The same hello bytes sent twice (a captured token) open one channel only."""
    world.concurrency["echo"] = 1
    from naosd import protocol
    from naosd.runtime.agent_link import channel_token

    nonce = secrets.token_hex(16)
    hello = protocol.encode_frame(protocol.hello(
        "agent", agent="echo", nonce=nonce, pid=os.getpid(),
        token=channel_token(world.key, "echo", nonce, os.getpid())))
    answers = []
    for _ in range(2):
        reader, writer = await asyncio.open_unix_connection(str(world.channels.path))
        writer.write(hello)
        await writer.drain()
        answers.append(await reader.read(4096))
        writer.close()
    assert b"hello" in answers[0] and b"permission_denied" in answers[1]


async def test_a_hello_naming_another_pid_is_refused(world: World) -> None:
    world.concurrency["echo"] = 1
    from naosd import protocol
    from naosd.runtime.agent_link import channel_token

    nonce, other = secrets.token_hex(16), os.getppid()
    reader, writer = await asyncio.open_unix_connection(str(world.channels.path))
    writer.write(protocol.encode_frame(protocol.hello(
        "agent", agent="echo", nonce=nonce, pid=other,
        token=channel_token(world.key, "echo", nonce, other))))
    await writer.drain()
    assert b"permission_denied" in await reader.read(4096)
    writer.close()


async def test_an_undefined_agent_is_refused(world: World) -> None:
    with pytest.raises(PermissionDenied, match="no agent named 'ghost'"):
        await world.spawn("ghost", ECHO, define=False)


ASKER = """
async def handle(message, ctx):
    return await ctx.ask(message["to"], message.get("payload"), timeout=message.get("t"))
"""


async def test_ask_runs_the_other_agent_as_the_caller_and_returns_its_output(world) -> None:
    await world.spawn("a", ASKER)
    await world.spawn("echo", ECHO)
    await world.ready("a")
    await world.ready("echo")
    out = await world.run("a", {"to": "echo", "payload": [1, 2]})
    assert out["echo"] == [1, 2]


async def test_a_cycle_fails_at_once_naming_the_chain(world: World) -> None:
    await world.spawn("a", ASKER)
    await world.spawn("b", ASKER)
    await world.ready("a")
    await world.ready("b")
    started = time.monotonic()
    with pytest.raises(AgentCrashed, match=r"call cycle: a -> b -> a"):
        await world.run("a", {"to": "b", "payload": {"to": "a"}})
    assert time.monotonic() - started < 15  # at once, not at a timeout


async def test_the_callee_sees_what_is_left_of_the_callers_deadline(world: World) -> None:
    await world.spawn("a", ASKER)
    await world.spawn("clock", "def handle(m, ctx):\n    return ctx.deadline\n")
    await world.ready("a")
    await world.ready("clock")
    left = await world.run("a", {"to": "clock"}, wait_s=7.0)
    assert 0 < left <= 7.0


SLOW = """
import asyncio
async def handle(message, ctx):
    await asyncio.sleep(message)
    ctx.state["done"] = ctx.state.get("done", 0) + 1
    return message
"""


async def test_a_queued_message_is_dropped_when_its_caller_gives_up(world: World) -> None:
    await world.spawn("slow", SLOW, concurrency=1)
    await world.ready("slow")
    first = asyncio.ensure_future(world.run("slow", 1.0))
    await asyncio.sleep(0.1)
    with pytest.raises(RequestTimeout):
        await world.run("slow", 0.0, wait_s=0.3)  # queued behind the first: never runs
    assert await first == 1.0
    await asyncio.sleep(0.3)
    assert await world.states.values("slow") == {"done": 1}
    rows = await world.db.call(lambda s: s.audit_tail(5, type="agent.run"))
    assert [r.detail["error"] for r in rows] == ["timeout", None]  # audited either way


async def test_max_concurrency_serves_messages_at_once(world: World) -> None:
    await world.spawn("par", SLOW, concurrency=8)
    await world.ready("par")
    started = time.monotonic()
    results = await asyncio.gather(*(world.run("par", 0.5) for _ in range(8)))
    assert results == [0.5] * 8
    assert time.monotonic() - started < 3.5  # not 8 x 0.5 s one after another


async def test_killing_the_handler_fails_its_runs_with_agent_crashed(world: World) -> None:
    proc = await world.spawn("slow", SLOW)
    await world.ready("slow")
    pending = asyncio.ensure_future(world.run("slow", 30))
    await asyncio.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(AgentCrashed, match="died during the run"):
        await pending


async def test_a_handler_cannot_claim_a_process_its_actor_did_not_start(world) -> None:
    world.concurrency["echo"] = 1
    world.definitions.specs["echo"] = {"kind": "template", "source": "echo"}
    from naos.peer import Peer

    sock = await asyncio.to_thread(open_channel, world.channels.path, "echo", world.key)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    peer = Peer(reader, writer, {})
    reading = asyncio.ensure_future(peer.run())
    spec = await peer.call("agent.start", {})
    assert spec["agent"] == "echo"
    with pytest.raises(PermissionDenied, match="is not the handler"):
        await peer.call("agent.loaded", {"ok": True, "pid": os.getppid()})
    assert world.channels.get("echo") is None
    peer.close()
    await reading


# -- the real launch path: confined by the definition --------------------------------

HOSTILE = """
import os, socket

def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__

def handle(message, ctx):
    out = {}
    out["read_state"] = attempt(lambda: open(message["secret"]).read())
    out["unix"] = attempt(lambda: socket.socket(socket.AF_UNIX).connect(message["sock"]))
    out["tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=1))
    out["write_work"] = attempt(lambda: open("scratch.txt", "w").write("ok"))
    out["env"] = sorted(os.environ)
    out["fds"] = []
    for f in os.listdir("/proc/self/fd"):
        try:
            out["fds"].append(os.readlink(f"/proc/self/fd/{f}"))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return out
"""


async def test_a_confined_handler_serves_and_cannot_reach_around_its_channel(world) -> None:
    from naosd.runtime.confine.support import probe
    from naosd.runtime.handler import HandlerProcess, HandlerSpec
    from naosd.runtime.hosting import Hosting

    support = probe()
    if support.missing():
        pytest.skip(f"this kernel cannot confine: {support.missing()}")
    state = world.root / "state"
    (state / "code").mkdir(parents=True)
    secret = state / "dashboard.token"
    secret.write_text("s3cret")
    snapshot = state / "code" / "abc"
    snapshot.mkdir()
    (snapshot / "agent.py").write_text(HOSTILE)
    hosting = Hosting(world.channels.path, state, (str(state), str(world.root)), world.key)
    world.concurrency["bad"] = 1
    world.definitions.specs["bad"] = {"kind": "python", "source": str(snapshot / "agent.py")}
    handler = await asyncio.to_thread(
        HandlerProcess.start, HandlerSpec("bad", str(snapshot), {}), hosting)
    try:
        await world.ready("bad")
        out = await world.run("bad", {"secret": str(secret), "sock": str(world.channels.path)})
    finally:
        await asyncio.to_thread(handler.stop, 1.0)
    assert out["read_state"] in ("PermissionError", "FileNotFoundError")
    assert out["unix"] == "PermissionError" and out["tcp"] == "PermissionError"
    assert out["write_work"] == "allowed"
    assert out["env"] == [] or set(out["env"]) <= {"LC_CTYPE"}
    # nothing inherited but the channel: sockets, pipes and the event loop's own
    # descriptors, /dev/null; no file or directory of anyone's
    opened = [f for f in out["fds"] if f.startswith("/") and f != "/dev/null"]
    assert opened == [], out["fds"]
    assert handler.confined


# -- WASM agents in the host: the guest's host calls go over the channel --------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "wasm"


async def spawn_wasm(world: World, name: str, module: str, config: dict[str, Any]) -> None:
    world.concurrency[name] = 1
    world.definitions.specs[name] = {"kind": "wasm", "source": str(EXAMPLES / module),
                                     "config": config, "max_concurrency": 1}
    sock = await asyncio.to_thread(open_channel, world.channels.path, name, world.key)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-m", "naos.host", "--fd", str(sock.fileno()),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={}, pass_fds=(sock.fileno(),))
    finally:
        sock.close()
    world.procs.append(proc)


async def test_a_wasm_agent_keeps_its_kv_through_the_channel(world: World) -> None:
    await spawn_wasm(world, "counter", "kv-counter.wasm",
                     {"grants": ["log", "kv_get", "kv_set"]})
    await world.ready("counter")
    assert [await world.run("counter", {}) for _ in range(3)] == [1, 2, 3]
    rows = await world.db.call(lambda s: s.query("SELECT key FROM kv WHERE agent = 'counter'"))
    assert rows  # the guest's key is in naosd's store, written over the channel
    logs = await world.db.call(lambda s: s.query("SELECT text FROM agent_logs"))
    assert any("counter=3" in row[0] for row in logs)


async def test_a_wasm_guest_that_fails_is_an_error_not_a_crash(world: World) -> None:
    await spawn_wasm(world, "summer", "sum.wasm", {})
    await world.ready("summer")
    ok = await world.run("summer", {"records": [{"id": "a", "amount_cents": 5}]})
    assert ok == {"total_cents": 5, "count": 1}
    with pytest.raises(NaosError):
        await world.run("summer", "not records")
    assert world.channels.get("summer") is not None  # still serving
