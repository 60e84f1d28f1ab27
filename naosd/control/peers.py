"""Who is on the other end of a control connection (Linux: ``SO_PEERCRED``,
``SO_PEERGROUPS``, ``SO_PEERPIDFD``; ``/proc`` for the process's ancestry)."""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from naosd.runtime.procs import is_descendant

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)  # Linux 6.5
MAX_PEER_GROUPS = 256  # read from the kernel; a peer with more is judged by these


@dataclass(frozen=True, slots=True)
class Peer:
    """The credentials the kernel captured when the client connected."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups


def peer_credentials(sock: socket.socket) -> Peer:
    """``SO_PEERCRED`` and ``SO_PEERGROUPS``: both captured by the kernel at
    ``connect()``, so they cannot change under us (``/proc/PID`` could: the
    pid may be reused).  Without SO_PEERGROUPS only the primary group counts."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_PEER_GROUPS)
    except OSError:  # an old kernel, or more than MAX_PEER_GROUPS groups
        return Peer(pid, uid, gid)
    return Peer(pid, uid, gid, struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def process_refusal(sock: socket.socket, peer: Peer,
                    is_agent_handler: Callable[[int], bool]) -> str | None:
    """Why the connecting process may not be served whatever its uid: it is a
    process of this naosd (an agent's handler, an actor, a sandbox worker:
    they share naosd's uid, and agents reach naos through their channel).

    The ancestry is read from ``/proc``, where a pid could be reused once its
    process exited: with a pidfd of the peer (``SO_PEERPIDFD``), a peer that
    exited before the check is refused too."""
    pidfd = _peer_pidfd(sock)
    try:
        me = os.getpid()
        if peer.pid > 0 and (is_agent_handler(peer.pid) or is_descendant(peer.pid, me)):
            return (f"pid {peer.pid} is a process of this naosd (an agent's handler?): "
                    "agents reach naos through their channel, not the control socket")
        if pidfd is not None and _exited(pidfd):
            return f"pid {peer.pid} exited before naosd could check it"
        return None
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _peer_pidfd(sock: socket.socket) -> int | None:
    try:
        fd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        return None
    return fd if fd >= 0 else None


def _exited(pidfd: int) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def no_agent_handler(pid: int) -> bool:
    """The default: no pid is known as an agent's handler (the ancestry check stays)."""
    return False
