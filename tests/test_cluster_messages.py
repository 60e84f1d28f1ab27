"""Every message of cluster mode survives a pickle round trip and is frozen."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from actors import cluster_messages as m
from actors.messages import Request

SAMPLES = [
    pytest.param(m.InitCluster("r1", "a", "10.0.0.1:7735", ("gpu",), True, 1.0, 5,
                               "/s/naos.db", "/s/audit.head"), id="InitCluster"),
    pytest.param(m.Beat("b", 3), id="Beat"),
    pytest.param(m.BeatAck("b", 3, 4242), id="BeatAck"),
    pytest.param(m.NodeLost("b", "no heartbeat answer for 5.0s"), id="NodeLost"),
    pytest.param(m.Unplaceable("g", "no node that is up has gpu"), id="Unplaceable"),
]


@pytest.mark.parametrize("msg", SAMPLES)
def test_pickle_round_trip(msg: object) -> None:
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(msg, protocol=protocol))
        assert copy == msg
        assert type(copy) is type(msg)


@pytest.mark.parametrize("msg", SAMPLES)
def test_frozen_and_slotted(msg: object) -> None:
    assert not hasattr(msg, "__dict__")
    first = dataclasses.fields(msg)[0]  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, first.name, "changed")


def test_every_message_class_has_a_sample() -> None:
    sampled = {type(p.values[0]) for p in SAMPLES}
    defined = {obj for obj in vars(m).values()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj is not Request}
    assert defined == sampled
