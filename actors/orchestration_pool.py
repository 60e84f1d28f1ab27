"""PoolActor: the shell of one pool (a child of the orchestration supervisor).

It drives two pure machines of ``actors/domain/pool.py``:

- the pool's **queue**: naosd writes each submitted task's row, then tells
  this actor (``Enqueue``); the queue machine picks a member within the
  pool's concurrency and the actor asks naosd to run the task
  (``RunPoolTask``: naosd marks it running, asks the agent, stores the final
  status).  A task naosd could not run (its own failure, e.g. while it
  starts) goes back to the queue after a backoff; it never ends failed for
  that.  When it starts (with the pool's first use, at recovery, after a
  crash) the actor loads the pool's queued and in-doubt tasks through the
  port; in-doubt ones are re-sent under the same idempotency key.
- each **fan-out** (``StartFanOut``) as a run, in a
  :class:`~actors.orchestration_run.RunDriver`: members asked through the
  port, replies merged, the outcome persisted as the run's final record
  (naosd answers ``pool.run`` from it).

No SQL here: everything durable goes through the port.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from functools import partial
from typing import Any

from thespian.actors import ActorExitRequest, WakeupMessage

from actors.base import NaosActor
from actors.domain import pool as pool_m
from actors.domain.run_events import ArmTimer, RunStep, Start, StepFailed, StepSucceeded, TimerFired
from actors.messages import ChildCrashed, ChildPid, PortReply
from actors.orch_messages import (
    CancelTask,
    Enqueue,
    InitPool,
    LoadPool,
    PoolChanged,
    RunPoolTask,
    StartFanOut,
)
from actors.orchestration_run import RunDriver


def queue_settings(spec: dict[str, Any]) -> pool_m.Rescaled:
    """What the queue machine takes from a pool definition."""
    return pool_m.Rescaled(tuple(pool_m.members_of(spec)), spec["pick"],
                           int(spec["concurrency"] or 0), float(spec["timeout_s"]))


class PoolActor(NaosActor):
    def __init__(self) -> None:
        super().__init__()
        self._parent: Any = None
        self._pool = ""
        self._queue: pool_m.QueueState | None = None
        self._early: list[pool_m.QueuedTask] = []  # submitted before the load answered
        self._fan_outs: dict[str, RunDriver] = {}
        self._crashed = False
        self._before_init: list[tuple[Any, Any]] = []  # naosd's requests overtook InitPool

    def _not_ready(self, msg: Any, sender: Any) -> bool:
        """naosd asks this actor directly, on another connection than its
        supervisor's InitPool: a request that comes first waits for it."""
        if self.port is None:
            self._before_init.append((msg, sender))
            return True
        return False

    def receiveMsg_InitPool(self, msg: InitPool, sender: Any) -> None:
        self._pool, self.port, self._parent = msg.pool, msg.port, sender
        self.name = f"pool:{msg.pool}"
        self.send(sender, ChildPid(self.name, os.getpid()))
        self.ask_port(LoadPool, self._loaded, pool=msg.pool)
        early, self._before_init = self._before_init, []
        for request, asker in early:
            self.receiveMessage(request, asker)

    def _loaded(self, reply: PortReply) -> None:
        if not reply.ok:
            self._crash(f"cannot load pool {self._pool!r}: {reply.error_code}: {reply.message}")
            return
        settings = queue_settings(reply.result["spec"])
        self._queue = pool_m.QueueState(self._pool, settings.members, settings.pick,
                                        settings.concurrency, settings.timeout_s)
        loaded = tuple(pool_m.QueuedTask(t, i) for t, i in reply.result["tasks"])
        self._on_queue(pool_m.Enqueued(loaded, settled=True))
        early, self._early = tuple(self._early), []
        self._on_queue(pool_m.Enqueued(early))

    # -- queue mode ------------------------------------------------------------
    def receiveMsg_Enqueue(self, msg: Enqueue, sender: Any) -> None:
        if self._not_ready(msg, sender):
            return
        tasks = tuple(pool_m.QueuedTask(task_id, task_input) for task_id, task_input in msg.tasks)
        if self._queue is None:
            self._early.extend(tasks)
        else:
            self._on_queue(pool_m.Enqueued(tasks))
        self.reply(sender, msg)

    def receiveMsg_PoolChanged(self, msg: PoolChanged, sender: Any) -> None:
        if self._not_ready(msg, sender):
            return
        if self._queue is not None:
            self._on_queue(queue_settings(msg.spec))
        self.reply(sender, msg)

    def receiveMsg_CancelTask(self, msg: CancelTask, sender: Any) -> None:
        if self._not_ready(msg, sender):
            return
        if self._queue is None:
            self._early = [t for t in self._early if t.task_id != msg.task_id]
        else:
            self._on_queue(pool_m.CancelQueued(msg.task_id))  # Conflict: already sent
        self.reply(sender, msg)

    def _on_queue(self, event: pool_m.QueueEvent) -> None:
        assert self._queue is not None
        self._queue, effects = pool_m.handle_queue(self._queue, event)
        for effect in effects:
            match effect:
                case RunStep(step=task_id, agent=member, message=task_input, timeout_s=wait):
                    self.ask_port(RunPoolTask, partial(self._task_settled, task_id),
                                  pool=self._pool, task_id=task_id, member=member,
                                  input=task_input, wait_s=wait)
                case ArmTimer(kind=kind, step=step, attempt=attempt, delay_s=delay):
                    self.wakeupAfter(timedelta(seconds=delay),
                                     payload=("queue", kind, step, attempt))

    def _task_settled(self, task_id: str, reply: PortReply) -> None:
        now = time.time()
        if reply.ok:
            self._on_queue(StepSucceeded(task_id, None, now))
        else:  # naosd could not run it: back to the queue, never failed for that
            self.logger().warning("pool %s: task %s not run (%s: %s); it is queued again",
                                  self._pool, task_id, reply.error_code, reply.message)
            self._on_queue(StepFailed(task_id, reply.error_code, reply.message, now))

    # -- fan-out -----------------------------------------------------------------
    def receiveMsg_StartFanOut(self, msg: StartFanOut, sender: Any) -> None:
        if self._not_ready(msg, sender):
            return
        state = pool_m.fan_out(msg.run_id, msg.spec, msg.record)
        driver = RunDriver(self, msg.run_id, msg.epoch, pool_m.handle_fan_out, state,
                           pool_m.fan_out_final)
        self._fan_outs[msg.run_id] = driver
        driver.safe_feed(Start(time.time()))
        self.reply(sender, msg)

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        match msg.payload:
            case ("queue", kind, step, attempt) if self._queue is not None:
                self._on_queue(TimerFired(kind, step, attempt, time.time()))
            case ("run", run_id, kind, step, attempt) if run_id in self._fan_outs:
                self._fan_outs[run_id].safe_feed(TimerFired(kind, step, attempt, time.time()))

    # -- Host ------------------------------------------------------------------
    def run_done(self, driver: RunDriver) -> None:
        self._fan_outs.pop(driver.run_id, None)

    def run_crashed(self, driver: RunDriver, reason: str) -> None:
        """A fan-out naosd could not serve ends here; naosd records it failed
        (its caller's wait runs out).  The queue goes on."""
        self.logger().warning("pool %s: fan-out %s abandoned: %s", self._pool, driver.run_id,
                              reason)
        driver.done = True
        self._fan_outs.pop(driver.run_id, None)

    def _crash(self, reason: str) -> None:
        if not self._crashed:
            self._crashed = True
            self.send(self._parent, ChildCrashed(self.name, reason))
            self.send(self.myAddress, ActorExitRequest())

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._queue is not None:
            info |= pool_m.queue_view(self._queue)
        info["fan_outs"] = sorted(self._fan_outs)
        return info
