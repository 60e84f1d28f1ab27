"""Every orchestration message survives a pickle round trip (the TCP transport
pickles), with the domain values it carries (events, a fan-out's spec)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from actors import orch_messages as om
from actors.domain.pool import FanOutSpec, QueuedTask
from actors.domain.run_events import Recover
from actors.domain.saga import Resolve

CHANGE = om.RunChange({"run_id": "s-1", "status": "running"}, (("saga.started", {"n": 1}),),
                      {"status": "failed"})
SAMPLES = [
    pytest.param(CHANGE, id="RunChange"),
    pytest.param(om.LoadRun("r1", None, "s-1"), id="LoadRun"),
    pytest.param(om.SaveRun("r2", None, "s-1", 3, 7, CHANGE), id="SaveRun"),
    pytest.param(om.RunAgentStep("r3", None, "s-1", 3, 8, None, "a", {"input": [1]}, "k", 61.0),
                 id="RunAgentStep"),
    pytest.param(om.RecoverRuns("r4", None), id="RecoverRuns"),
    pytest.param(om.LoadPool("r5", None, "p"), id="LoadPool"),
    pytest.param(om.RunPoolTask("r6", None, "p", "t1", "m1", {"x": 1}, 30.0), id="RunPoolTask"),
    pytest.param(om.CoordinatorGaveUp("r7", None, "s-1", "saga", "6 crashes"),
                 id="CoordinatorGaveUp"),
    pytest.param(om.StartRun("r8", "s-1", "saga", {"status": "pending"}, 3), id="StartRun"),
    pytest.param(om.RunCommand("r9", "s-1", "saga", Resolve("by hand", 1.0)), id="RunCommand"),
    pytest.param(om.RunCommand("r9", "s-1", "saga", Recover(1.0), None), id="RunCommand-recover"),
    pytest.param(om.PoolAddress("r10", "p"), id="PoolAddress"),
    pytest.param(om.Enqueue("r11", (("t1", [1, 2]), ("t2", None))), id="Enqueue"),
    pytest.param(om.PoolChanged("r12", {"name": "p", "size": 3}), id="PoolChanged"),
    pytest.param(om.CancelTask("r13", "t1"), id="CancelTask"),
    pytest.param(om.StartFanOut("r14", "p-1", 4, {"input": 1},
                                FanOutSpec("p", "quorum:2", ("a", "b"), 2, 5.0)),
                 id="StartFanOut"),
    pytest.param(om.InitOrchestration("orchestration", None, None), id="InitOrchestration"),
    pytest.param(om.InitCoordinator("s-1", "saga", None, {"status": "pending"}, 3),
                 id="InitCoordinator"),
    pytest.param(om.InitPool("p", None), id="InitPool"),
    pytest.param(om.RunFinished("s-1"), id="RunFinished"),
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
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, dataclasses.fields(msg)[0].name, "changed")  # type: ignore[arg-type]


def test_every_message_class_has_a_sample() -> None:
    sampled = {type(p.values[0]) for p in SAMPLES}  # type: ignore[attr-defined]
    defined = {obj for obj in vars(om).values()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj)
               and obj.__module__ == om.__name__}
    assert defined == sampled


def test_a_queued_task_pickles_with_its_input() -> None:
    task = QueuedTask("t1", {"deep": [1, {"x": None}]}, 2)
    assert pickle.loads(pickle.dumps(task)) == task
