"""A hostile agent: on each message it tries one escape and says what happened.

Not a test module: ``tests/test_hostile_agent_e2e.py`` registers this file with
``naosctl create --source`` and sends it ``{"try": NAME, "args": {...}}``; the
reply is ``{"ok": true, "value": ...}`` when the attempt worked, else
``{"ok": false, "errno": N, "error": "..."}`` (``errno`` None for a refusal
that is not an ``OSError``: an error from naosd, a ``MemoryError``).

Every attempt uses only what a handler holds: its process, its ``ctx`` and
the channel behind it (``ctx._call``, the raw agent API)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

PTRACE_ATTACH = 16
PTRACE_DETACH = 17

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _read(path: str) -> int:
    with open(path, "rb") as fh:
        return len(fh.read(4096))


def _write(path: str) -> str:
    with open(path, "w") as fh:
        fh.write("written by a hostile agent\n")
    return path


def _unix(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        return "connected"


def _tcp(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hello from a hostile agent\n")
        return sock.recv(100).decode(errors="replace")


def _control(path: str, method: str) -> Any:
    """Speak naosd's control protocol (an unconfined handler can import naosctl)."""
    from naosctl.client import Client

    with Client(path, timeout=10) as client:
        return client.call(method)


def _socket(family: int, kind: int) -> str:
    socket.socket(family, kind).close()
    return "opened"


def _exec(path: str) -> str:
    os.execv(path, [path, "-c", "exit 0"])  # replaces the handler when it works


def _ptrace(pid: int) -> str:
    _check(_libc.ptrace(ctypes.c_long(PTRACE_ATTACH), ctypes.c_long(pid), None, None))
    _libc.ptrace(ctypes.c_long(PTRACE_DETACH), ctypes.c_long(pid), None, None)
    return "attached"


def _fork() -> int:
    pid = os.fork()
    if pid == 0:  # the child: nothing to do
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def _fork_bomb(most: int) -> int:
    """Fork children that wait, until the kernel says no (or ``most``); the
    count is the answer when it never does. The children are ended either way."""
    children: list[int] = []
    try:
        for _ in range(most):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        return len(children)
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


def _orphan(new_session: bool) -> int:
    """Fork a child that outlives this handler if it can (it holds the
    channel's descriptor, inherited): its pid."""
    pid = os.fork()
    if pid == 0:
        if new_session:
            with contextlib.suppress(OSError):
                os.setsid()
        time.sleep(120)
        os._exit(0)
    return pid


def _spin(seconds: float) -> float:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return time.process_time()


def _allocate(mib: int) -> int:
    block = bytearray(mib * 1024 * 1024)
    return len(block)


def _descriptors() -> dict[str, str]:
    """Every open descriptor and what it points to."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[name] = os.readlink(f"/proc/self/fd/{name}")
    return out


def _link(source: str, target: str) -> str:
    os.link(source, target)
    return target


def _chmod(path: str) -> str:
    os.chmod(path, 0o666)
    return path


SYNC: dict[str, Callable[..., Any]] = {
    "read": _read, "write": _write, "listdir": os.listdir, "unix": _unix, "tcp": _tcp,
    "control": _control, "socket": _socket, "exec": _exec,
    "kill": lambda pid, sig: os.kill(pid, sig), "ptrace": _ptrace, "fork": _fork,
    "allocate": _allocate, "fork_bomb": _fork_bomb, "orphan": _orphan, "spin": _spin,
    "link": _link, "chmod": _chmod,
    "environ": lambda: dict(os.environ), "descriptors": _descriptors,
    "whoami": lambda: {"pid": os.getpid(), "cwd": os.getcwd()},
}


async def _forge(ctx: Any, method: str, params: dict[str, Any]) -> Any:
    """A raw call on the channel, with whatever parameters the agent likes."""
    call: Callable[[str, dict[str, Any]], Awaitable[Any]] = ctx._call
    return await call(method, params)


def _forge_reply(ctx: Any, reply: Any) -> str:
    """Answer the NEXT run with ``reply`` as it is, bypassing naos.host (the
    handler owns its process: naosd must not trust what the host checks)."""
    from naos.peer import Incoming, Method

    peer = ctx._call.__self__
    real = peer.methods["run"]

    async def forged(call: Incoming) -> Any:
        peer.methods["run"] = real
        return reply

    peer.methods["run"] = Method(forged)
    return "armed"


async def handle(msg: dict[str, Any], ctx: Any) -> dict[str, Any]:
    what, args = msg["try"], msg.get("args", {})
    try:
        if what == "channel":
            value = await _forge(ctx, args["method"], args.get("params", {}))
        elif what == "forge_reply":
            value = _forge_reply(ctx, args["reply"])
        elif what == "state":
            ctx.state[args["key"]] = args["value"]
            value = dict(ctx.state)
        else:
            value = SYNC[what](**args)
    except Exception as exc:  # noqa: BLE001 - every refusal is the answer
        # naosd's errors may be OSErrors too (PermissionDenied): they carry a code
        return {"ok": False, "errno": exc.errno if isinstance(exc, OSError) else None,
                "error": f"{type(exc).__name__}: {exc}", "code": getattr(exc, "code", None)}
    return {"ok": True, "value": value}

