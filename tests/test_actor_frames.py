"""Bounded, authenticated actor frames (naosd.runtime.frames).

The pure part feeds the push parser directly. The multiproc part plays
another local user against a real hardened runtime: it floods the root's and
the admin's loopback ports with huge announced frames, forged length tags and
idle connections, and checks that no process of the tree grows and that the
actors keep answering.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from thespian.system.messages.status import Thespian_StatusReq
from thespian.system.transport.streamBuffer import toSendBuffer

from actors.messages import Ping, Reply, new_request_id
from naosd.errors import FrameTooLarge
from naosd.runtime.actorsys import ActorRuntime
from naosd.runtime.frames import (
    MAC_SIZE,
    MAX_ACTOR_FRAME,
    MAX_HEADER,
    MAX_PENDING_CONNECTIONS,
    TAG_SIZE,
    AuthenticatedPickle,
    FrameBuffer,
)

MIB = 1 << 20
CODEC = AuthenticatedPickle(secrets.token_bytes(32))


def frame(obj: Any, codec: AuthenticatedPickle = CODEC) -> bytes:
    """What Thespian writes on the wire for ``obj``."""
    return toSendBuffer(obj, codec.dumps)


def feed(buf: FrameBuffer, data: bytes, step: int | None = None) -> None:
    """Feed as Thespian does: never more than ``remainingAmount()`` at a time."""
    pos = 0
    while pos < len(data) and not buf.isDone():
        n = step or buf.remainingAmount()
        buf.addMore(data[pos:pos + n])
        pos += n


# --------------------------------------------------------------------------
# the push parser


@given(st.binary(max_size=5000), st.lists(st.integers(1, 700), min_size=1, max_size=40))
def test_any_chunking_gives_the_message_back(payload: bytes, cuts: list[int]) -> None:
    data = frame(("addr", payload))
    buf, pos, i = FrameBuffer(CODEC), 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        buf.addMore(data[pos:pos + step])
        pos, i = pos + step, i + 1
    assert buf.isDone() and buf.rejected is None
    assert buf.completed() == (("addr", payload), b"")


def test_bytes_past_the_frame_are_kept_as_extra() -> None:
    buf = FrameBuffer(CODEC)
    data = frame("one") + b"next"
    buf.addMore(data[:10])
    buf.addMore(data[10:])
    assert buf.completed() == ("one", b"next")
    buf.removeExtra()
    assert buf.completed() == ("one", b"")


def test_the_ack_frames_decode() -> None:
    for packet in ("ACK", "ACK+DATAERR"):
        buf = FrameBuffer(CODEC)
        feed(buf, frame(packet))
        assert buf.completed() == (packet, b"")


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        pytest.param(b"%d>" % (MAX_ACTOR_FRAME + 1), "limit is", id="oversized"),
        pytest.param(b"1000000000000000000000>", "header", id="absurd-length"),
        pytest.param(b"9" * 200, "no length header", id="digits-forever"),
        pytest.param(b"-5>", "bad length header", id="negative"),
        pytest.param(b"1e6>", "bad length header", id="not-digits"),
        pytest.param(b"10>", "too short", id="shorter-than-tag-and-mac"),
    ],
)
def test_bad_headers_are_refused_before_any_body(wire: bytes, reason: str) -> None:
    buf = FrameBuffer(CODEC)
    feed(buf, wire + b"x" * 1000)
    assert buf.isDone() and reason in (buf.rejected or "")
    assert buf.buffered == 0 and buf.completed() is None


def test_a_forged_length_tag_is_refused_after_32_bytes() -> None:
    buf = FrameBuffer(CODEC)
    size = 30 * MIB
    buf.addMore(b"%d>" % size)
    assert buf.remainingAmount() == TAG_SIZE  # never asks for more before the tag
    buf.addMore(os.urandom(TAG_SIZE) + b"\0" * MIB)  # even when handed more at once
    assert "bad length tag" in (buf.rejected or "")
    assert buf.buffered == 0 and buf.isDone() and buf.completed() is None


def test_a_frame_signed_with_another_secret_is_refused() -> None:
    other = AuthenticatedPickle(secrets.token_bytes(32))
    buf = FrameBuffer(CODEC)
    feed(buf, frame("hello", other))
    assert buf.completed() is None and "length tag" in (buf.rejected or "")


def test_a_bad_mac_under_a_good_tag_is_never_unpickled() -> None:
    body = CODEC.dumps(("addr", "payload"))
    forged = body[:TAG_SIZE] + b"\0" * MAC_SIZE + body[TAG_SIZE + MAC_SIZE:]
    buf = FrameBuffer(CODEC)
    feed(buf, b"%d>" % len(forged) + forged)
    assert buf.completed() is None and "unauthenticated" in (buf.rejected or "")


def test_unauthenticated_bytes_held_are_bounded() -> None:
    """Whatever an outsider sends, at most MAX_HEADER + TAG_SIZE bytes are kept."""
    worst = 0
    for wire in (b"%d>" % (20 * MIB) + os.urandom(4 * MIB), b"7" * 4096,
                 b"33554432>" + b"\xff" * MIB):
        buf = FrameBuffer(CODEC)
        pos = 0
        while pos < len(wire) and not buf.isDone():
            n = buf.remainingAmount()
            buf.addMore(wire[pos:pos + n])
            worst = max(worst, buf.buffered)
            pos += n
        assert buf.isDone() and buf.rejected
    assert worst <= MAX_HEADER + TAG_SIZE


def test_sending_an_oversized_message_fails_where_it_is_sent() -> None:
    small = AuthenticatedPickle(secrets.token_bytes(32), max_frame=1000)
    with pytest.raises(FrameTooLarge, match="1000-byte actor frame limit"):
        small.dumps(b"x" * 2000)
    assert small.loads(small.dumps(b"x" * 100)) == b"x" * 100


# --------------------------------------------------------------------------
# a real runtime under attack from another local user (loopback)


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status size in KiB (VmRSS, VmHWM = peak RSS); 0 if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def socket_fds(pid: int) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def stream_into(port: int, header: bytes, total: int, sent: list[int]) -> None:
    """Announce ``header`` and push up to ``total`` bytes until refused."""
    chunk = b"\0" * MIB
    with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", port), timeout=10) as s:
        s.sendall(header)
        pushed = 0
        while pushed < total:
            s.sendall(chunk)
            pushed += len(chunk)
            sent.append(len(chunk))


@pytest.fixture
def runtime() -> Iterator[ActorRuntime]:
    rt = ActorRuntime.start(secret=secrets.token_bytes(32))
    pids = rt.descendant_pids()
    try:
        yield rt
    finally:
        pids = sorted(set(pids) | set(rt.descendant_pids()))
        rt.shutdown(timeout=10)
        gc.collect()  # Thespian's endpoint sockets, under this module's filters
        assert [pid for pid in pids if vm(pid, "VmRSS")] == []


def ask(rt: ActorRuntime, target: Any, msg: Any) -> Any:
    return rt.system.ask(target, msg, 5.0)


@pytest.mark.multiproc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_local_flood_neither_grows_the_actors_nor_stops_them(runtime: ActorRuntime) -> None:
    pong = ask(runtime, runtime.root, Ping(new_request_id()))
    assert isinstance(pong, Reply) and pong.ok
    root_pid = pong.result["pid"]
    admin = runtime.system._systemBase.adminAddr
    ports = {"root": runtime.root.addressDetails.sockname[1], "admin": runtime.admin_port}
    tree = runtime.descendant_pids()
    peak_before = {pid: vm(pid, "VmHWM") for pid in tree}
    sockets_before = socket_fds(root_pid)

    sent: list[int] = []
    attacks = []
    for port in ports.values():
        attacks += [(port, b"1000000000>", 64 * MIB), (port, b"1000000000>", 64 * MIB),
                    (port, b"%d>" % (30 * MIB) + os.urandom(TAG_SIZE), 30 * MIB)]
    threads = [threading.Thread(target=stream_into, args=(*a, sent), daemon=True)
               for a in attacks]
    idle = []
    started = time.monotonic()
    try:
        for t in threads:
            t.start()
        for _ in range(200):  # slow loris: connect, send part of a header, wait
            s = socket.create_connection(("127.0.0.1", ports["root"]), timeout=10)
            s.sendall(b"12")
            idle.append(s)
        for _ in range(20):  # the actors answer throughout
            assert ask(runtime, runtime.root, Ping(new_request_id())).ok
            assert ask(runtime, admin, Thespian_StatusReq()) is not None
        held = socket_fds(root_pid) - sockets_before
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        for s in idle:
            s.close()
    elapsed = time.monotonic() - started
    growth = {pid: vm(pid, "VmHWM") - peak_before[pid] for pid in tree}
    print(f"\nflood: {sum(sent) / MIB:.0f} MiB pushed by {len(attacks)} connections and "  # noqa: T201
          f"200 idle ones in {elapsed:.1f}s; root held {held} extra sockets; "
          f"peak RSS growth per process (KiB): {sorted(growth.values())}")
    assert max(growth.values()) < 16 * 1024, growth
    assert held <= MAX_PENDING_CONNECTIONS + 8
    assert ask(runtime, runtime.root, Ping(new_request_id())).ok
    assert runtime.descendant_pids() == tree
