"""Agent channels: naosd's end of each agent's one way out.

Every agent's code runs in a handler process of its own (``naos.host``),
started by its agent actor.  Before it loads any agent code the handler
connects to naosd's agent socket (``<runtime dir>/agents.sock``, in the
daemon's private directory) and presents a one-time token that its actor
derived from the daemon's key: ``HMAC(key, agent, nonce, pid)``.  naosd
checks the token, that the nonce was never used, and that the connecting
process is the pid it names (``SO_PEERCRED``); from then on **the
connection is the agent**: every call on it acts as that agent and only as
it, whatever its parameters say.  The handler then confines itself and
cannot open another connection (see docs/security.md).

On the channel naosd sends ``run`` requests (an operator's ``agent.run``, a
saga step, another agent's ``ctx.ask``) and serves the agent API to the
handler (:mod:`naosd.agents.api`).  Each run carries its deadline and its
call chain, so nested calls inherit what is left of the caller's time and
a cycle is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naos.peer import Method, Peer
from naosd import protocol
from naosd.agents.answers import checked_logs, checked_ms, checked_reason
from naosd.errors import (
    AgentCrashed,
    InvalidRequest,
    NaosError,
    PermissionDenied,
    ProtocolError,
    RequestTimeout,
    from_wire,
)
from naosd.errors.agents import Cancelled, ChannelClosed
from naosd.runtime.agent_link import channel_token

log = logging.getLogger("naosd.agents.channels")

HELLO_MAX_BYTES = 4096  # an actor's hello is tiny: nothing bigger is buffered
HELLO_TIMEOUT_S = 10.0


@dataclass(slots=True)
class RunInfo:
    """What naosd knows about a run it sent on a channel: the calls the
    handler makes while serving it inherit its deadline and chain."""

    deadline: float  # time.monotonic()
    chain: tuple[str, ...]  # agents waiting on this run, outermost first
    trace: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """A run's answer from the handler (``crashed`` set when the handler
    raised: it exits after sending this)."""

    output: Any
    ms: float
    logs: list[Any]
    state: dict[str, Any] | None
    crashed: str | None
    stop: bool
    error: NaosError | None = None  # the handler answered with an error (a WASM guest's)


class Channel:
    """One live, authenticated handler of one agent.

    ``actor_pid`` is the agent actor that opened it; ``pid`` the handler
    process it handed it to (known once the handler says it loaded)."""

    def __init__(self, agent: str, actor_pid: int, max_concurrency: int) -> None:
        self.agent = agent
        self.acts_as = agent  # who its calls are charged and gated as (a clone: its pool's agent)
        self.actor_pid = actor_pid
        self.pid = 0
        self.peer: Peer | None = None
        self.ready = asyncio.Event()
        self.gone = asyncio.Event()
        self.crash_reason = ""
        self.load_error = ""
        self._slots = asyncio.Semaphore(max(1, max_concurrency))
        self._run_ids = itertools.count(1)
        self.runs: dict[int, RunInfo] = {}
        self.connected_at = time.monotonic()

    async def run(self, payload: Any, *, request_id: str, key: str, deadline: float,
                  chain: tuple[str, ...], trace: dict[str, Any] | None = None) -> RunOutcome:
        """Deliver one message and wait for its answer, at most until
        ``deadline``.  A message still queued behind the agent's concurrency
        limit when the caller gives up is dropped: it never runs."""
        assert self.peer is not None
        left = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(left, 0)):
                async with self._slots:
                    return await self._deliver(payload, request_id, key, deadline, chain,
                                               trace or {})
        except TimeoutError:
            raise RequestTimeout(f"agent {self.agent!r} did not answer within "
                                 f"{max(left, 0):.3g}s") from None

    async def _deliver(self, payload: Any, request_id: str, key: str, deadline: float,
                       chain: tuple[str, ...], trace: dict[str, Any]) -> RunOutcome:
        assert self.peer is not None
        run_id = next(self._run_ids)
        self.runs[run_id] = RunInfo(deadline, chain, trace)
        try:
            result = await self.peer.call("run", {
                "run": run_id, "input": payload, "request_id": request_id,
                "idempotency_key": key, "deadline_s": max(deadline - time.monotonic(), 0.0),
                "chain": list(chain), "trace": trace})
        except ChannelClosed:
            raise AgentCrashed(f"agent {self.agent!r} (pid {self.pid}) died during the run"
                               f"{': ' + self.crash_reason if self.crash_reason else ''}; "
                               "its supervisor restarts it") from None
        finally:
            self.runs.pop(run_id, None)
        if not isinstance(result, dict):
            raise ProtocolError(f"agent {self.agent!r}: a run's answer must be a map")
        crashed = checked_reason(result.get("crashed"))
        if crashed:
            self.crash_reason = crashed
        error = result.get("error")
        return RunOutcome(result.get("output"), checked_ms(self.agent, result.get("ms")),
                          checked_logs(self.agent, result.get("logs")), result.get("state"),
                          crashed or None, bool(result.get("stop")),
                          from_wire(str(error.get("code")), str(error.get("message")))
                          if isinstance(error, dict) else None)

    def run_info(self, run_id: Any) -> RunInfo | None:
        """The run a call was made for (only runs of this channel)."""
        return self.runs.get(run_id) if isinstance(run_id, int) else None

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()


MethodsFor = Callable[[Channel], Mapping[str, Method]]


class AgentChannels:
    """The agent socket and the registry of live channels, by agent name."""

    def __init__(self, path: Path, key: bytes, methods_for: MethodsFor, *,
                 known: Callable[[str], Awaitable[int | None]],
                 acts_as: Callable[[str], Awaitable[str]] | None = None,
                 on_ready: Callable[[Channel], None] | None = None,
                 on_gone: Callable[[Channel], None] | None = None) -> None:
        """``known(agent)`` is the agent's max_concurrency if it is defined
        (None: no such agent, the handler is refused); ``acts_as(agent)`` the
        identity its calls are charged and gated as (a pool's clone: the
        pool's agent; default the agent itself); ``methods_for`` builds
        the agent API a channel serves; ``on_ready``/``on_gone`` tell the
        agents service a handler loaded its code / went away."""
        self.path = path
        self._key = key
        self._methods_for = methods_for
        self._known = known
        self._acts_as = acts_as
        self._on_ready = on_ready
        self._on_gone = on_gone
        self._server: asyncio.AbstractServer | None = None
        self._used_nonces: set[str] = set()
        self.live: dict[str, Channel] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._serving: set[asyncio.Task[Any]] = set()
        self.refused = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._on_client, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for channel in list(self.live.values()):
            channel.close()
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # -- finding a channel ------------------------------------------------------
    def get(self, agent: str) -> Channel | None:
        channel = self.live.get(agent)
        if channel is None or channel.gone.is_set() or not channel.ready.is_set():
            return None
        return channel

    async def wait(self, agent: str, deadline: float, *, not_pid: int = 0) -> Channel | None:
        """The agent's ready channel (not the process ``not_pid``), waiting
        until ``deadline`` for one; None when none came."""
        while True:
            channel = self.get(agent)
            if channel is not None and channel.pid != not_pid:
                return channel
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            event = self._changed.setdefault(agent, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)

    def _signal(self, agent: str) -> None:
        event = self._changed.pop(agent, None)
        if event is not None:
            event.set()

    # -- accepting a handler -----------------------------------------------------
    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        try:
            channel = await self._admit(reader, writer)
        except (NaosError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            self.refused += 1
            reason = exc.message if isinstance(exc, NaosError) else type(exc).__name__
            log.warning("agent channel refused: %s", reason)
            with contextlib.suppress(Exception):
                writer.write(protocol.encode_frame(protocol.error(
                    None, PermissionDenied.code, reason)))
                await writer.drain()
            writer.close()
            return
        try:
            assert channel.peer is not None
            await channel.peer.run()
        finally:
            channel.gone.set()
            if self.live.get(channel.agent) is channel:
                del self.live[channel.agent]
            self._signal(channel.agent)
            if self._on_gone is not None:
                self._on_gone(channel)

    async def _admit(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> Channel:
        pid, uid = _peer(writer)
        if uid != os.getuid():
            raise PermissionDenied(f"uid {uid} may not open an agent channel")
        hello = await asyncio.wait_for(_read_hello(reader), HELLO_TIMEOUT_S)
        agent, nonce, token = (hello.get(k) for k in ("agent", "nonce", "token"))
        if not all(isinstance(v, str) and v for v in (agent, nonce, token)):
            raise PermissionDenied("an agent channel's hello needs agent, nonce and token")
        if hello.get("pid") != pid:
            raise PermissionDenied(f"an agent channel's hello names pid {hello.get('pid')!r}, "
                                   f"its sender is pid {pid}")
        assert isinstance(agent, str)
        assert isinstance(nonce, str)
        assert isinstance(token, str)
        want = channel_token(self._key, agent, nonce, pid)
        if nonce in self._used_nonces or not hmac.compare_digest(want, token):
            raise PermissionDenied(f"bad or reused token for agent {agent!r} (pid {pid})")
        self._used_nonces.add(nonce)
        concurrency = await self._known(agent)
        if concurrency is None:
            raise PermissionDenied(f"no agent named {agent!r}")
        old = self.live.get(agent)
        if old is not None and not old.gone.is_set():
            old.close()  # a new incarnation replaces a dying one
        channel = Channel(agent, pid, concurrency)
        if self._acts_as is not None:
            channel.acts_as = await self._acts_as(agent)
        channel.peer = Peer(reader, writer, self._methods_for(channel))
        self.live[agent] = channel
        writer.write(protocol.encode_frame(protocol.hello("server", agent=agent, pid=pid)))
        await writer.drain()
        return channel

    def mark_ready(self, channel: Channel, pid: int) -> None:
        """The handler ``pid`` loaded its code: runs may go to it.

        Raises PermissionDenied unless ``pid`` is a child of the actor that
        opened the channel (a handler cannot claim another process)."""
        if parent_of(pid) != channel.actor_pid:
            raise PermissionDenied(f"pid {pid} is not the handler agent {channel.agent!r}'s "
                                   f"actor started")
        channel.pid = pid
        channel.ready.set()
        self._signal(channel.agent)
        if self._on_ready is not None:
            self._on_ready(channel)


async def _read_hello(reader: asyncio.StreamReader) -> dict[str, Any]:
    header = await reader.readexactly(protocol.HEADER.size)
    (size,) = protocol.HEADER.unpack(header)
    if size > HELLO_MAX_BYTES:
        raise InvalidRequest(f"a handler's hello of {size} bytes (limit {HELLO_MAX_BYTES})")
    message = protocol.decode_body(await reader.readexactly(size))
    if message.get("type") != "hello":
        raise InvalidRequest("the first frame on an agent channel must be a hello")
    return message


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (Linux /proc), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return int(stat[stat.rfind(")") + 2:].split()[1])


def _peer(writer: asyncio.StreamWriter) -> tuple[int, int]:
    sock = writer.get_extra_info("socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


__all__ = ["AgentChannels", "Cancelled", "Channel", "RunInfo", "RunOutcome"]
