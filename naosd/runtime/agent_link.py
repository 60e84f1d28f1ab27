"""Opening an agent's channel, on the agent actor's side.

The actor (which holds the daemon's key) connects to naosd's agent socket,
presents a one-time token for its agent, reads naosd's hello and hands the
connected socket to the handler process it starts: that descriptor is the
only thing of naosd's the handler ever gets.  The key never leaves the
actor; the token is bound to the actor's pid and a nonce naosd accepts
once.  Blocking and short (a local socket): the actor does it while it
starts its agent.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
from pathlib import Path

from naosd import protocol
from naosd.errors import PermissionDenied, ProtocolError, Unavailable

TOKEN_CONTEXT = b"naos agent channel v1"
HELLO_MAX_BYTES = 4096
CONNECT_TIMEOUT_S = 10.0


def channel_key(secret: bytes) -> bytes:
    """The key agent tokens are made with, derived from the daemon's secret
    (so a token never doubles as an actor frame MAC)."""
    return hmac.new(secret, TOKEN_CONTEXT, hashlib.sha256).digest()


def channel_token(key: bytes, agent: str, nonce: str, pid: int) -> str:
    """The token the process ``pid`` presents for ``agent`` with ``nonce``."""
    text = f"{agent}\0{nonce}\0{pid}".encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def open_channel(path: Path | str, agent: str, key: bytes, *,
                 timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """A connected, admitted channel for ``agent`` (blocking).

    Raises:
        Unavailable: naosd's agent socket cannot be reached.
        PermissionDenied: naosd refused the token.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise Unavailable(f"naosd's agent socket {path}: {exc.strerror or exc}") from None
        nonce = secrets.token_hex(16)
        sock.sendall(protocol.encode_frame(protocol.hello(
            "agent", agent=agent, nonce=nonce, pid=os.getpid(),
            token=channel_token(key, agent, nonce, os.getpid()))))
        answer = _read_frame(sock)
        if answer.get("type") != "hello":
            raise PermissionDenied(f"naosd refused agent {agent!r}'s channel: "
                                   f"{answer.get('message')}")
        sock.settimeout(None)
        sock.set_inheritable(True)
        return sock
    except BaseException:
        sock.close()
        raise


def _read_frame(sock: socket.socket) -> dict[str, object]:
    header = _read_exactly(sock, protocol.HEADER.size)
    (size,) = protocol.HEADER.unpack(header)
    if size > HELLO_MAX_BYTES:
        raise ProtocolError(f"naosd's hello of {size} bytes is too large")
    return protocol.decode_body(_read_exactly(sock, size))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except TimeoutError:
            raise Unavailable("naosd did not answer the agent channel's hello") from None
        if not chunk:
            raise Unavailable("naosd closed the agent channel during its hello")
        data += chunk
    return data
