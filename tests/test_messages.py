"""Every message class survives a pickle round trip (the TCP transport pickles)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from actors import cluster_messages as cm
from actors import messages as m
from actors.domain.definitions import AgentDef

SAMPLES = [
    pytest.param(m.Request("r1"), id="Request"),
    pytest.param(m.Reply("r1", True, {"pid": 1, "children": []}), id="Reply-ok"),
    pytest.param(m.Reply("r1", False, None, "not_found", "no child"), id="Reply-err"),
    pytest.param(m.Ping("r2"), id="Ping"),
    pytest.param(m.GetTree("r3"), id="GetTree"),
    pytest.param(m.StartChild("r4", "heartbeat", "heartbeat"), id="StartChild"),
    pytest.param(m.StopChild("r5", "heartbeat"), id="StopChild"),
    pytest.param(m.CrashChild("r6", "heartbeat"), id="CrashChild"),
    pytest.param(m.KillChild("r7", "heartbeat"), id="KillChild"),
    pytest.param(m.WhereIs("r8", "heartbeat"), id="WhereIs"),
    pytest.param(m.InitChild("heartbeat"), id="InitChild"),
    pytest.param(m.ChildPid("heartbeat", 4242), id="ChildPid"),
    pytest.param(m.HandlerGone(4242), id="HandlerGone"),
    pytest.param(m.Crash(), id="Crash"),
    pytest.param(m.InitRoot("r9", "/s/naos.db", "/s/audit.head"), id="InitRoot"),
    pytest.param(m.InitSupervisor("main", "/s/naos.db", "/s/audit.head", None),
                 id="InitSupervisor"),
    pytest.param(m.InitAgent(AgentDef("a", "template", "echo", {"k": 1}), "/s/naos.db"),
                 id="InitAgent"),
    pytest.param(m.InitAgent(AgentDef("a", "python", "/h.py"), "/s/naos.db", probe=True),
                 id="InitAgent-probe"),
    pytest.param(m.ChildSpawned("a", 4243), id="ChildSpawned"),
    pytest.param(m.ProbeAgent("r17", AgentDef("a", "python", "/h.py"), 12.5), id="ProbeAgent"),
    pytest.param(m.ProbeResult("a", "/h.py, line 3: NameError: name 'x' is not defined"),
                 id="ProbeResult"),
    pytest.param(m.ChildCrashed("a", "handler raised"), id="ChildCrashed"),
    pytest.param(m.ChildDone("a"), id="ChildDone"),
    pytest.param(m.ExitNoted("a"), id="ExitNoted"),
    pytest.param(m.RunAgent("r10", {"q": [1, 2]}, "key"), id="RunAgent"),
    pytest.param(m.Sync("r11"), id="Sync"),
    pytest.param(m.Sync("r11", stop=("a",), start=("b",)), id="Sync-names"),
    pytest.param(m.Resolve("r12", "a"), id="Resolve"),
    pytest.param(m.Activate("r15", "a"), id="Activate"),
    pytest.param(m.Deactivate("r16", "a"), id="Deactivate"),
    pytest.param(m.Registered("a", "agent", None, 7, "agents"), id="Registered"),
    pytest.param(m.TreeUpdate("main", {"name": "main", "children": []}), id="TreeUpdate"),
    pytest.param(m.InitSandbox("sandbox", "/s/naos.db", "/s/wasm-cache", 2), id="InitSandbox"),
    pytest.param(m.RunWasm("r13", b"\0asm", b"{}", {"fuel": 10}, ("log",), "a"),
                 id="RunWasm"),
    pytest.param(m.ValidateWasm("r14", b"\0asm", {"fuel": 10}), id="ValidateWasm"),
    pytest.param(m.PortRequest("r17", None), id="PortRequest"),
    pytest.param(m.PortReply("r17", True, {"k": 1}), id="PortReply"),
    pytest.param(m.PortEcho("r18", None, {"payload": [1]}), id="PortEcho"),
]
# cluster mode's messages (actors/cluster_messages.py)
CLUSTER_SAMPLES = [
    pytest.param(cm.InitCluster("r15", "a", "10.0.0.1:7735", ("gpu",), True, 1.0, 5,
                                "/s/naos.db", "/s/audit.head", "0" * 32), id="InitCluster"),
    pytest.param(cm.Beat("b", 3, "0" * 32), id="Beat"),
    pytest.param(cm.HostedFor("0" * 32), id="HostedFor"),
    pytest.param(cm.BeatAck("b", 3, 4242), id="BeatAck"),
    pytest.param(cm.NodeLost("b", "no heartbeat answer for 5.0s"), id="NodeLost"),
    pytest.param(cm.Unplaceable("g", "no node that is up has gpu"), id="Unplaceable"),
]


@pytest.mark.parametrize("msg", SAMPLES + CLUSTER_SAMPLES)
def test_pickle_round_trip(msg: object) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(msg, protocol=protocol))
        assert copy == msg
        assert type(copy) is type(msg)


@pytest.mark.parametrize("msg", SAMPLES + CLUSTER_SAMPLES)
def test_frozen_and_slotted(msg: object) -> None:
    assert not hasattr(msg, "__dict__")
    fields = dataclasses.fields(msg)  # type: ignore[arg-type]
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, fields[0].name, "changed")


@pytest.mark.parametrize(("module", "samples"), [(m, SAMPLES), (cm, CLUSTER_SAMPLES)])
def test_every_message_class_has_a_sample(module: object, samples: list[object]) -> None:
    sampled = {type(p.values[0]) for p in samples}  # type: ignore[attr-defined]
    defined = {
        obj for obj in vars(module).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__  # type: ignore[attr-defined]
    }
    assert defined == sampled


def test_requests_carry_their_id_first() -> None:
    assert m.StartChild("abc", "n", "k").request_id == "abc"
    assert isinstance(m.KillChild("x", "n"), m.Request)


def test_new_request_ids_are_unique() -> None:
    assert len({m.new_request_id() for _ in range(1000)}) == 1000
