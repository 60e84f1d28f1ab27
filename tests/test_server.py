"""The control server's rules at the frame level: ids, duplicates, cancel, the
in-flight limit, the request timeout, values at the boundary, the pre-hello
frame limit and refusals.  The real ControlServer on a temporary socket, a
small dispatcher written here whose methods wait until the test lets them
finish (so "in flight" is a state, not a timing), and a raw msgpack client
as a client in another language would write it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from harness import short_tempdir

from naosd.control.peers import Peer
from naosd.control.roles import OPERATOR
from naosd.control.server import Call, ControlServer, Dispatcher, Streaming, Unary

MAX_FRAME = 1 << 20
OPEN: list[asyncio.StreamWriter] = []


class Methods(Dispatcher):
    """echo: the call as the handler sees it; wait: until released; ticks: a
    stream of one item, then open until cancelled."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def lookup(self, method: str) -> tuple[Unary | None, Streaming | None]:
        return {"echo": (self.echo, None), "wait": (self.wait, None),
                "ticks": (None, self.ticks)}.get(method, (None, None))

    async def echo(self, call: Call) -> dict[str, Any]:
        left = None if call.deadline is None else call.deadline - time.monotonic()
        return {"params": call.params, "left": left}

    async def wait(self, call: Call) -> str:
        await self.release.wait()
        return "released"

    async def ticks(self, call: Call) -> AsyncIterator[int]:
        yield 1
        await asyncio.Event().wait()


class Raw:
    """A client speaking frames with plain msgpack, no naos code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, message: Any) -> None:
        body = msgpack.packb(message, use_bin_type=True)
        self.writer.write(struct.pack(">I", len(body)) + body)
        await self.writer.drain()

    async def recv(self) -> dict[str, Any]:
        (size,) = struct.unpack(">I", await asyncio.wait_for(self.reader.readexactly(4), 10))
        body = await asyncio.wait_for(self.reader.readexactly(size), 10)
        return msgpack.unpackb(body, raw=False, strict_map_key=False)

    async def eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        return await self.recv()


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with short_tempdir() as base:
        yield base / "s"


@pytest.fixture
async def served(sock_path: Path) -> AsyncIterator[tuple[ControlServer, Methods]]:
    methods = Methods()
    server = ControlServer(sock_path, methods, authorize=lambda peer: OPERATOR,
                           max_frame=MAX_FRAME, max_connections=2, handshake_timeout=5.0,
                           server_info={"server": "test"})
    await server.start()
    try:
        yield server, methods
    finally:
        methods.release.set()
        while OPEN:
            writer = OPEN.pop()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.close(drain_timeout=1.0)


async def connect(server: ControlServer, hello: bool = True) -> Raw:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    OPEN.append(writer)
    raw = Raw(reader, writer)
    if hello:
        assert (await raw.ask({"type": "hello", "protocol": 1}))["type"] == "hello"
    return raw


def request(req_id: Any, method: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"type": "request", "id": req_id, "method": method, "params": {}, **extra}


@pytest.mark.parametrize("req_id", [0, -1, 1, -(2**63), 2**64 - 1])
async def test_any_integer_is_a_valid_id(served, req_id):
    raw = await connect(served[0])
    answer = await raw.ask(request(req_id))
    assert (answer["type"], answer["id"]) == ("reply", req_id)


@pytest.mark.parametrize(("req_id", "shown"), [
    pytest.param(1.0, "got float 1.0 (send ids as msgpack integers)", id="float"),
    pytest.param("1", "got str '1'", id="string"),
    pytest.param(True, "got bool True", id="bool"),
    pytest.param(None, "got nil", id="nil"),
])
async def test_a_bad_id_is_named_and_the_connection_goes_on(served, req_id, shown):
    raw = await connect(served[0])
    answer = await raw.ask(request(req_id))
    assert answer == {"type": "error", "id": None, "code": "invalid_request",
                      "message": f"request: 'id' must be an integer, {shown}"}
    assert (await raw.ask(request(7)))["id"] == 7


async def test_a_missing_id_is_named(served):
    raw = await connect(served[0])
    answer = await raw.ask({"type": "request", "method": "echo"})
    assert (answer["id"], answer["code"]) == (None, "invalid_request")
    assert answer["message"] == "request: 'id' is missing (an integer is required)"


async def test_a_duplicate_id_in_flight_is_refused_and_the_first_goes_on(served):
    _, methods = served
    raw = await connect(served[0])
    await raw.send(request(5, "wait"))
    refused = await raw.ask(request(5))
    assert (refused["type"], refused["id"], refused["code"]) == ("error", 5, "invalid_request")
    assert "id 5 is already in flight" in refused["message"]
    methods.release.set()
    assert await raw.recv() == {"type": "reply", "id": 5, "result": "released"}
    assert (await raw.ask(request(5)))["type"] == "reply"  # free again once answered


async def test_a_stream_with_id_0_is_cancelled_and_a_duplicate_leaves_it_alone(served):
    raw = await connect(served[0])
    assert await raw.ask(request(0, "ticks")) == {"type": "event", "id": 0, "data": 1}
    duplicate = await raw.ask(request(0, "ticks"))
    assert (duplicate["id"], duplicate["code"]) == (0, "invalid_request")
    await raw.send({"type": "cancel", "id": 0})
    assert await raw.recv() == {"type": "end", "id": 0}


async def test_cancel_of_a_unary_a_finished_or_an_unknown_id_is_ignored(served):
    _, methods = served
    raw = await connect(served[0])
    await raw.send(request(1, "wait"))
    await raw.send({"type": "cancel", "id": 1})  # unary: it runs on
    await raw.send({"type": "cancel", "id": 99})  # unknown
    assert (await raw.ask(request(2)))["id"] == 2  # nothing was sent for the cancels
    await raw.send({"type": "cancel", "id": 2})  # finished
    methods.release.set()
    assert await raw.recv() == {"type": "reply", "id": 1, "result": "released"}
    answer = await raw.ask({"type": "cancel", "id": 1.5})
    assert (answer["id"], answer["code"]) == (None, "invalid_request")
    assert "cancel: 'id' must be an integer" in answer["message"]


async def test_the_in_flight_limit_counts_streams(served):
    raw = await connect(served[0])
    for i in range(100):
        await raw.send(request(i, "ticks"))
    for i in range(100, 128):
        await raw.send(request(i, "wait"))
    events = [await raw.recv() for _ in range(100)]
    assert {e["id"] for e in events} == set(range(100))
    over = await raw.ask(request(128))
    assert (over["id"], over["code"]) == (128, "invalid_request")
    assert "too many requests in flight (limit 128, streams included)" in over["message"]
    await raw.send({"type": "cancel", "id": 0})
    assert await raw.recv() == {"type": "end", "id": 0}
    assert (await raw.ask(request(128)))["type"] == "reply"


async def test_the_request_timeout_becomes_the_calls_deadline(served):
    raw = await connect(served[0])
    assert (await raw.ask(request(1)))["result"]["left"] is None
    for given in (30, 2.5, 86400):
        left = (await raw.ask(request(2, timeout=given)))["result"]["left"]
        assert 0 < left <= given


@pytest.mark.parametrize("seconds", [0, -1, 86401, "5", True, float("inf"), [1]])
async def test_a_bad_request_timeout_is_named(served, seconds):
    raw = await connect(served[0])
    answer = await raw.ask(request(3, timeout=seconds))
    assert (answer["id"], answer["code"]) == (3, "invalid_request")
    assert "'timeout'" in answer["message"] or "timeout: NaN" in answer["message"]


@pytest.mark.parametrize(("params", "error"), [
    pytest.param({"input": {"a": [0, 1, 2, b"\x00"]}},
                 "request 4: params.input.a[3]: binary values are not allowed", id="binary"),
    pytest.param({"input": msgpack.Timestamp(1700000000, 0)},
                 "request 4: params.input: msgpack timestamp values are not allowed",
                 id="timestamp"),
    pytest.param({"input": msgpack.ExtType(42, b"\x01")},
                 "request 4: params.input: msgpack extension type 42", id="ext"),
    pytest.param({"input": {1: "one"}},
                 "request 4: params.input: map keys must be strings, got int 1", id="int-key"),
])
async def test_values_json_cannot_hold_are_refused_with_their_path(served, params, error):
    raw = await connect(served[0])
    answer = await raw.ask({**request(4), "params": params})
    assert (answer["type"], answer["id"], answer["code"]) == ("error", 4, "invalid_request")
    assert answer["message"].startswith(error)
    assert (await raw.ask(request(5)))["type"] == "reply"


async def test_a_1000_level_input_is_an_invalid_request(served):
    value: Any = 1
    for _ in range(1000):
        value = [value]
    raw = await connect(served[0])
    answer = await raw.ask({**request(6), "params": {"input": value}})
    assert (answer["id"], answer["code"]) == (6, "invalid_request")
    assert "nested deeper than 64 levels" in answer["message"]


async def test_binary_is_allowed_as_a_parameter_itself(served):
    raw = await connect(served[0])
    answer = await raw.ask({**request(8), "params": {"module": b"\x00asm"}})
    assert answer["result"]["params"] == {"module": b"\x00asm"}


async def test_a_large_frame_before_the_hello_is_refused_at_its_length(served):
    raw = await connect(served[0], hello=False)
    raw.writer.write(struct.pack(">I", 16 << 20) + b"\x90" * 65536)
    answer = await raw.recv()
    assert (answer["id"], answer["code"]) == (None, "protocol_error")
    assert answer["message"] == ("peer announced a 16777216-byte frame; the limit is 4096 "
                                 "before the hello")
    assert await raw.eof()


async def test_a_hello_and_a_large_request_sent_together_are_both_served(served):
    raw = await connect(served[0], hello=False)
    big = {**request(9), "params": {"blob": "x" * 100_000}}
    body = b"".join(struct.pack(">I", len(b)) + b for b in (
        msgpack.packb({"type": "hello", "protocol": 1}), msgpack.packb(big)))
    raw.writer.write(body)
    assert (await raw.recv())["type"] == "hello"
    assert (await raw.recv())["result"]["params"]["blob"] == "x" * 100_000


async def test_a_refused_client_can_still_send_its_hello_after_reading_why(served):
    server, _ = served
    held = [await connect(server), await connect(server)]  # the limit is 2
    refused = await connect(server, hello=False)
    answer = await refused.recv()
    assert answer == {"type": "error", "id": None, "code": "permission_denied",
                      "message": "too many connections (limit 2)"}
    assert await refused.eof()  # naosd shut down its side only
    await refused.send({"type": "hello", "protocol": 1})  # no EPIPE: it still reads
    refused.writer.close()
    assert (await held[0].ask(request(1)))["type"] == "reply"


async def test_peer_credentials_are_those_of_the_test(served):
    server, _ = served
    await connect(server)
    [conn] = server.connections
    assert conn.peer == Peer(os.getpid(), os.getuid(), os.getgid(), tuple(os.getgroups()))
