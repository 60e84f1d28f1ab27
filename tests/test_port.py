"""naosd's actor port on a real hardened runtime: actors ask, naosd answers.

A relay actor (defined here; forked actors inherit it) asks the port on the
test's behalf and hands the reply back, so each test drives the whole path:
actor -> port listener thread -> event loop handler -> sender thread -> actor.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from actors.base import NaosActor
from actors.messages import PortEcho, PortReply, PortRequest, Reply, Request, new_request_id
from naosd.errors import Conflict
from naosd.runtime.actorsys import ActorRuntime
from naosd.runtime.bridge import Bridge
from naosd.runtime.port import ActorPort

pytestmark = [
    pytest.mark.multiproc,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.timeout(120),
]


@dataclass(frozen=True, slots=True)
class Relay(Request):
    """Test -> relay: ask the port ``count`` echoes (or one ``kind``)."""

    port: Any
    count: int = 1
    kind: str = "echo"


@dataclass(frozen=True, slots=True)
class Refused(PortRequest):
    """A request the test's handler refuses."""


@dataclass(frozen=True, slots=True)
class Unserved(PortRequest):
    """A request nobody registered."""


class RelayActor(NaosActor):
    def receiveMsg_Relay(self, msg: Relay, sender: Any) -> None:
        self.port = msg.port
        replies: list[PortReply] = []

        def collect(reply: PortReply) -> None:
            replies.append(reply)
            if len(replies) == msg.count:
                self.reply(sender, msg, [(r.ok, r.result, r.error_code) for r in replies])

        for i in range(msg.count):
            if msg.kind == "echo":
                self.ask_port(PortEcho, collect, payload={"i": i, "pid": os.getpid()})
            else:
                self.ask_port(Refused if msg.kind == "refused" else Unserved, collect)


@pytest.fixture
async def port() -> AsyncIterator[tuple[ActorRuntime, Bridge, ActorPort]]:
    runtime = ActorRuntime.start(secret=os.urandom(32))
    bridge = Bridge(runtime, timeout_s=30.0)
    served: list[Any] = []

    async def echo(request: PortEcho) -> Any:
        served.append(request.payload)
        await asyncio.sleep(0)
        return request.payload

    async def refuse(request: Refused) -> Any:
        raise Conflict("no, said naosd")

    actor_port = ActorPort(runtime.system, {PortEcho: echo, Refused: refuse})
    try:
        await actor_port.start()
        yield runtime, bridge, actor_port
    finally:
        await actor_port.aclose()
        bridge.close()
        await asyncio.to_thread(runtime.shutdown, 10.0)
        gc.collect()  # Thespian's endpoints leave sockets for the GC (closed here, in scope)


async def relay(rt: ActorRuntime, bridge: Bridge, port: ActorPort, **kw: Any) -> Reply:
    actor = rt.system.createActor(RelayActor)
    return await bridge.ask_to(actor, Relay(new_request_id(), port.address, **kw))


async def test_an_actor_reaches_a_naosd_handler_and_gets_its_result(port) -> None:
    rt, bridge, actor_port = port
    reply = await relay(rt, bridge, actor_port, count=1)
    [(ok, result, code)] = reply.result
    assert ok and code == ""
    assert result["i"] == 0 and result["pid"] != os.getpid()  # asked from the actor's process
    assert actor_port.served == 1


async def test_many_requests_in_flight_from_many_actors_all_answered(port) -> None:
    rt, bridge, actor_port = port
    replies = await asyncio.gather(*(relay(rt, bridge, actor_port, count=50) for _ in range(4)))
    for reply in replies:
        assert sorted(r[1]["i"] for r in reply.result) == list(range(50))
        assert all(ok for ok, _, _ in reply.result)
    assert actor_port.served == 200


async def test_a_handler_error_reaches_the_actor_as_its_wire_code(port) -> None:
    rt, bridge, actor_port = port
    [(ok, _, code)] = (await relay(rt, bridge, actor_port, kind="refused")).result
    assert (ok, code) == (False, "conflict")


async def test_an_unregistered_request_type_is_refused_not_dropped(port) -> None:
    rt, bridge, actor_port = port
    [(ok, _, code)] = (await relay(rt, bridge, actor_port, kind="unserved")).result
    assert (ok, code) == (False, "invalid_request")


async def test_an_actor_without_the_port_address_fails_clearly(port) -> None:
    rt, bridge, _actor_port = port
    actor = rt.system.createActor(RelayActor)
    reply = await bridge.ask_to(actor, Relay(new_request_id(), None), raw=True)
    assert (reply.ok, reply.error_code) == (False, "unavailable")
    assert "no port" in reply.message
