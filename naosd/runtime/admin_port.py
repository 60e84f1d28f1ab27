"""The Thespian admin's TCP port: held from the moment it is picked until the
admin listens on it, so nobody can take it in between (stdlib only).

Picking a free port, closing the probe and letting Thespian bind it later left
a window in which another process could take it (a client's ephemeral port is
enough). Thespian's own probe then took the port for a running admin, asked it
for 11 s and failed with "not a valid or useable ActorSystem Admin" (about one
start in 200 after ``kill -9``). The held socket has ``SO_REUSEADDR`` and never
listens: Thespian's probe and its admin (both ``SO_REUSEADDR``) can still bind
and listen there, nobody else can bind the port or get it as an ephemeral
port (Linux's rules for ``SO_REUSEADDR``, checked in tests)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket

from naosd.errors import Unavailable
from naosd.runtime.proctable import proc_table

log = logging.getLogger(__name__)

THESPIAN_DEFAULT_ADMIN_PORT = 1900  # collides with SSDP: never use it


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (never Thespian's default 1900)."""
    with _hold_free_port(host) as s:
        return int(s.getsockname()[1])


def _hold_free_port(host: str) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))  # no SO_REUSEADDR: the kernel picks a port nobody holds
        if s.getsockname()[1] != THESPIAN_DEFAULT_ADMIN_PORT:
            return s
        s.close()


def hold_admin_port(host: str, required: int | None = None, preferred: int | None = None
                    ) -> socket.socket:
    """A bound, not listening socket on the admin port: ``required`` (cluster
    mode: the members know it), else ``preferred`` if it is free, else a free
    port. The caller closes it once the admin listens.

    Raises:
        Unavailable: ``required`` is in use (naming who listens there) or
            cannot be bound.
    """
    port = required or preferred
    if port:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return s
        except OSError as exc:
            s.close()
            if exc.errno != errno.EADDRINUSE:
                raise Unavailable(f"admin port {host}:{port}: {exc.strerror}") from None
        holders = listeners(host, port)
        who = f"listening: pid {', '.join(map(str, holders))}" if holders else "bound"
        if required:
            raise Unavailable(f"admin port {host}:{port} is already in use ({who})")
        log.warning("admin port %s:%d is already in use (%s); picking a free one",
                    host, port, who)
    s = _hold_free_port(host)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # so the admin can bind it
    return s


def listeners(host: str, port: int) -> list[int]:
    """Pids with a TCP socket in LISTEN on ``host:port`` (Linux; else [])."""
    packed = socket.htonl(int.from_bytes(socket.inet_aton(host), "big"))
    wanted = (f"{packed:08X}:{port:04X}", f"00000000:{port:04X}")
    inodes: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[1] in wanted:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    return [p.pid for p in (proc_table() if inodes else []) if _holds(p.pid, inodes)]


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    return any(_readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
