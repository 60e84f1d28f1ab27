"""The stdio transport of a supervised tool server: the SDK's client talks
newline-delimited JSON-RPC over the server's stdin and stdout, and naosd owns
the process.

Why not the SDK's ``stdio_client``: naosd must know the server's pid and the
moment it exits (a crash is restarted), the server must die with naosd
(``PR_SET_PDEATHSIG``: the SDK cannot set it), its stderr goes to a log file,
and a message is bounded (:data:`MAX_MESSAGE_BYTES`) before it is buffered.
The server runs in a session of its own (a Ctrl-C at naosd's terminal does not
reach it); stopping it closes its stdin, then sends SIGTERM and SIGKILL to its
process group.

Imports the SDK: only :mod:`naosd.broker.tools.session` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import mcp.types as types
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage

from naosd.broker.llm.health import describe_exit
from naosd.runtime.procs import PR_SET_PDEATHSIG, prctl

MAX_MESSAGE_BYTES: Final = 16 << 20  # one JSON-RPC line from the server
STOP_GRACE_S: Final = 2.0  # after stdin closes, and again after SIGTERM


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's own protocol for a subprocess, telling when the process exited
    (its ``wait()`` also waits for the pipes to close)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.gone = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.gone.set()


@dataclass(eq=False)
class ServerProcess:
    """The spawned server: its pid, and how it ended once ``exited`` is set."""

    proc: asyncio.subprocess.Process
    gone: asyncio.Event  # the process exited (set by the protocol)
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # ... and that was noted
    how: str = ""
    kill_reason: str = ""  # naosd killed it for this reason (a crash all the same)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def note_exit(self) -> str:
        """How it ended (once ``gone``), remembered in ``how``."""
        if not self.how:
            code = self.proc.returncode
            self.how = self.kill_reason or describe_exit(code if code is not None else -9)
        return self.how


def _die_with_parent() -> None:  # preexec_fn: between fork and exec
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


async def spawn(argv: tuple[str, ...], *, env: dict[str, str], cwd: str, log_path: Path
                ) -> ServerProcess:
    """Start the server.  Raises OSError when it cannot be run."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    err = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    loop = asyncio.get_running_loop()
    try:  # asyncio.create_subprocess_exec, with _Protocol
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(MAX_MESSAGE_BYTES, loop), *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err, env=env, cwd=cwd,
            start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        os.close(err)
    return ServerProcess(asyncio.subprocess.Process(transport, protocol, loop), protocol.gone)


@asynccontextmanager
async def transport(server: ServerProcess) -> AsyncIterator[TransportStreams]:
    """The SDK's streams over ``server``'s pipes; the server is stopped on exit."""
    to_session, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_session = anyio.create_memory_object_stream[SessionMessage](0)

    async def watch() -> None:
        # Not proc.wait(): it also waits until the pipes close, and a child of the
        # server that inherited them would keep an exited server looking alive.
        await server.gone.wait()
        server.note_exit()
        server.exited.set()
        _signal_group(server, signal.SIGKILL)  # what it started dies with it
        await to_session.aclose()  # requests in flight fail now, not at their deadline

    async def read() -> None:
        assert server.proc.stdout is not None
        async with to_session:
            while (line := await _line(server)) is not None:
                if line.strip():
                    with contextlib.suppress(anyio.ClosedResourceError,
                                             anyio.BrokenResourceError):
                        await to_session.send(_parse(line))

    async def write() -> None:
        assert server.proc.stdin is not None
        try:
            async with from_session:
                async for message in from_session:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    server.proc.stdin.write(text.encode() + b"\n")
                    await server.proc.stdin.drain()
        except (ConnectionError, OSError):
            await to_session.aclose()  # the server is gone: pending requests fail now

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(read)
        tg.start_soon(write)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                await stop(server)
            tg.cancel_scope.cancel()


async def _line(server: ServerProcess) -> bytes | None:
    """The next line, or None at the end (or after killing a server whose line
    was over the limit)."""
    assert server.proc.stdout is not None
    try:
        line = await server.proc.stdout.readline()
    except ValueError:  # the stream's limit: the line is not buffered further
        server.kill_reason = f"sent a message over {MAX_MESSAGE_BYTES >> 20} MiB"
        _signal_group(server, signal.SIGKILL)
        return None
    return line or None


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return exc


async def stop(server: ServerProcess) -> None:
    """Close its stdin; SIGTERM its group after STOP_GRACE_S, SIGKILL after
    another; returns once it exited (waits on the process itself, not on a
    task of :func:`transport`, which may be gone)."""
    if server.proc.stdin is not None:
        with contextlib.suppress(OSError):
            server.proc.stdin.close()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.gone.wait(), STOP_GRACE_S)
            break
        _signal_group(server, sig)
    else:
        await server.gone.wait()
    server.note_exit()
    _signal_group(server, signal.SIGKILL)  # anything it started and left behind


def _signal_group(server: ServerProcess, sig: signal.Signals) -> None:
    """``sig`` to the server's process group (it leads its own session)."""
    try:
        os.killpg(server.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:  # the group is gone and its id reused by someone else's
        with contextlib.suppress(ProcessLookupError):
            server.proc.send_signal(sig)
