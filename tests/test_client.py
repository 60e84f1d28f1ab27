"""The client library and naosctl against a small fake naosd written here (a
peer speaking the protocol with plain msgpack on a real Unix socket): what
the client sends (its timeout), every error code naosctl can meet (each
rebuilt, exiting with its declared code), and a refusal read even when the
server closes at once."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from harness import clean_env, naosctl, short_tempdir

from naosctl.client import AsyncClient, Client
from naosctl.main import cli
from naosd.errors import ERRORS_BY_CODE, NaosError, PermissionDenied

Answer = Callable[[dict[str, Any]], list[dict[str, Any]]]


def send(conn: socket.socket, message: dict[str, Any]) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    conn.sendall(struct.pack(">I", len(body)) + body)


def recv(conn: socket.socket) -> dict[str, Any] | None:
    head = conn.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return None
    (size,) = struct.unpack(">I", head)
    return msgpack.unpackb(conn.recv(size, socket.MSG_WAITALL), raw=False)


class FakeNaosd:
    """Accepts connections one by one; ``answer`` turns each request into the
    frames sent back.  ``refuse`` sends an error instead of the hello and
    closes at once, without reading (the harshest server)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.answer: Answer = lambda req: [{"type": "reply", "id": req["id"], "result": 1}]
        self.refuse: str | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn, contextlib.suppress(OSError):
                self._talk(conn)

    def _talk(self, conn: socket.socket) -> None:
        if self.refuse is not None:
            send(conn, {"type": "error", "id": None, "code": "permission_denied",
                        "message": self.refuse})
            return
        hello = recv(conn)
        assert hello is not None and hello["type"] == "hello"
        send(conn, {"type": "hello", "protocol": 1, "server": "fake"})
        while (req := recv(conn)) is not None:
            self.requests.append(req)
            for frame in self.answer(req):
                send(conn, frame)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self._sock.close()
        self._thread.join(timeout=10)


@pytest.fixture
def fake() -> Iterator[FakeNaosd]:
    with short_tempdir() as base:
        server = FakeNaosd(base / "s")
        try:
            yield server
        finally:
            server.close()


def test_a_unary_call_carries_the_clients_timeout_and_a_stream_does_not(fake):
    fake.answer = lambda req: ([{"type": "end", "id": req["id"]}] if req["method"] == "s"
                               else [{"type": "reply", "id": req["id"], "result": 1}])
    with Client(fake.path, timeout=120) as c:
        assert c.call("u", x=1) == 1
        assert list(c.stream("s")) == []
    unary, stream = fake.requests
    assert (unary["method"], unary["params"], unary["timeout"]) == ("u", {"x": 1}, 120)
    assert "timeout" not in stream


async def test_the_async_client_carries_its_timeout_too(fake):
    async with AsyncClient(fake.path, timeout=7.5) as c:
        assert await c.call("u") == 1
    assert fake.requests[0]["timeout"] == 7.5


def test_naosctl_tells_naosd_how_long_it_waits(fake):
    result = CliRunner().invoke(cli, ["--socket", str(fake.path), "--timeout", "120",
                                      "reload"])
    assert result.exit_code == 1  # the fake's result is no config.reload answer
    assert fake.requests[0]["timeout"] == 120


@pytest.mark.parametrize("code", sorted(ERRORS_BY_CODE))
def test_naosctl_exits_with_every_codes_declared_exit_code(fake, code):
    fake.answer = lambda req: [{"type": "error", "id": req["id"], "code": code,
                                "message": f"because {code}"}]
    result = CliRunner().invoke(cli, ["--socket", str(fake.path), "reload"])
    assert result.exit_code == ERRORS_BY_CODE[code].exit_code, result.output
    assert f"naosctl: because {code}" in result.output


def test_a_real_naosctl_rebuilds_a_code_it_never_imported_the_area_of(fake):
    fake.answer = lambda req: [{"type": "error", "id": req["id"], "code": "axis_unknown_auid",
                                "message": "AXIS knows no agent with AUID 'x'"}]
    out = naosctl("--socket", str(fake.path), "axis", "verify", "auid-x", env=clean_env())
    assert out.returncode == ERRORS_BY_CODE["axis_unknown_auid"].exit_code == 4
    assert out.stderr == "naosctl: AXIS knows no agent with AUID 'x'\n"


def test_a_refusal_is_read_even_when_the_server_closes_at_once(fake):
    fake.refuse = "too many connections (limit 1)"
    for _ in range(20):  # the hello's send fails with EPIPE in some of these
        with pytest.raises(PermissionDenied, match=r"too many connections \(limit 1\)"):
            Client(fake.path, timeout=10).connect()


async def test_the_async_client_reads_a_refusal_too(fake):
    fake.refuse = "uid 1234 is not allowed to use this naosd"
    for _ in range(10):
        with pytest.raises(PermissionDenied, match="uid 1234"):
            await AsyncClient(fake.path, timeout=10).connect()


def test_errors_raised_by_the_client_are_naos_errors(fake):
    fake.answer = lambda req: [{"type": "error", "id": req["id"], "code": "no_route",
                                "message": "nothing fits"}]
    with Client(fake.path) as c, pytest.raises(NaosError) as info:
        c.call("broker.execute", task="x")
    assert (type(info.value).__name__, info.value.code) == ("NoRoute", "no_route")
