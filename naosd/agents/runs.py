"""Running a message on an agent: the one path for every caller.

An operator's ``naosctl run``, a saga step, a pool member's task and another
agent's ``ctx.ask`` all come here with a :class:`~naosd.agents.api.Caller`
(who asks, until when, within which call chain).  In order:

1. the message is checked at the boundary (JSON values only, bounded depth);
2. an agent that calls another must pass the trust gate (as the caller);
3. the agent's live channel is found, or the agent is activated and its
   channel awaited, within the caller's deadline (a handler that cannot
   load says why at once);
4. the message runs on the channel (a message still queued behind the
   agent's concurrency when the caller gives up never runs);
5. the record (state changes, log lines, the ``agent.run`` audit row) is
   committed (group commit) before the reply is acknowledged, whatever the
   outcome: a timeout, a crash and a success are all audited.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from naosd import telemetry
from naosd.agents.api import Caller
from naosd.agents.channels import AgentChannels, Channel, RunOutcome
from naosd.errors import (
    AgentCrashed,
    Conflict,
    NaosError,
    NotFound,
    RequestTimeout,
    TrustDenied,
)
from naosd.storage import origin
from naosd.storage.agent_runs import RunRecord, check_change
from naosd.storage.group_commit import GroupCommit
from naosd.values import check_values

OPERATOR = "operator"  # the caller of a run that no agent asked for


class TrustCheck(Protocol):
    async def evaluate(self, agent: str | None, cost_micro: int) -> tuple[Any, dict[str, Any]]: ...


Activate = Callable[[str, float], Awaitable[None]]  # (agent, deadline): start it for this call


class AgentRuns:
    def __init__(self, channels: AgentChannels, activate: Activate,
                 records: GroupCommit[RunRecord], gate: TrustCheck | None = None) -> None:
        self._channels = channels
        self._activate = activate
        self._records = records
        self._gate = gate
        self.last_used: dict[str, float] = {}

    async def run_as(self, name: str, payload: Any, *, caller: Caller, key: str
                     ) -> dict[str, Any]:
        """Run ``payload`` on agent ``name`` for ``caller``; see the module docstring."""
        check_values({"input": payload})
        with telemetry.span(f"invoke_agent {name}") as span:
            if span.recording:
                span.update({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name,
                             "naos.caller": caller.agent, "naos.chain.depth": len(caller.chain)})
            await self._check_caller(name, caller)
            result = await self._run(name, payload, caller, key)
            span.set("naos.agent.pid", result["pid"])
            return result

    async def _check_caller(self, name: str, caller: Caller) -> None:
        """An agent that calls another must pass the trust gate."""
        asking_agent = caller.agent if caller.agent != OPERATOR else None
        if asking_agent is not None and self._gate is not None:
            verdict, _ = await self._gate.evaluate(asking_agent, 0)
            if not verdict.allow:
                raise TrustDenied(f"agent {asking_agent!r} may not call {name!r}: "
                                  f"{verdict.reason}")

    async def _run(self, name: str, payload: Any, caller: Caller, key: str) -> dict[str, Any]:
        started = time.monotonic()
        run = _Run(name, key, caller, started)
        try:
            run.channel = await self._channel(name, caller.deadline)
            self.last_used[name] = time.monotonic()
            run.outcome = await run.channel.run(
                payload, request_id=uuid.uuid4().hex, key=key, deadline=caller.deadline,
                chain=caller.chain, trace=telemetry.carrier() or dict(caller.trace))
            if run.outcome.crashed:
                run.error = AgentCrashed(f"agent {name!r} crashed: {run.outcome.crashed}")
            elif run.outcome.error is not None:
                run.error = run.outcome.error
            else:
                run.sets, run.deletes = check_change(run.outcome.state)
        except NaosError as exc:
            run.error = exc
        except asyncio.CancelledError:
            run.error = RequestTimeout(f"the caller of agent {name!r} went away")
            await asyncio.shield(self._record(run))
            raise
        await self._record(run)
        error, outcome, channel = run.error, run.outcome, run.channel
        if error is not None:
            raise error
        assert outcome is not None
        assert channel is not None
        return {"agent": name, "output": outcome.output, "ms": outcome.ms, "pid": channel.pid,
                "cost_micro_usd": 0}

    async def _channel(self, name: str, deadline: float) -> Channel:
        channel = self._channels.get(name)
        if channel is not None:
            return channel
        await self._activate(name, deadline)
        channel = await self._channels.wait(name, deadline)
        if channel is None:
            raise RequestTimeout(f"agent {name!r} did not become ready in time")
        return channel

    async def _record(self, run: _Run) -> None:
        if isinstance(run.error, NotFound | Conflict) and run.channel is None:
            # no such agent, or one that cannot start now (failed, stopped):
            # nothing ran, nothing to record (a caller hammering a failed
            # agent must not flood the audit log)
            return
        outcome, channel, error = run.outcome, run.channel, run.error
        detail = {"ok": error is None, "ms": outcome.ms if outcome else None,
                  "wall_ms": round((time.monotonic() - run.started) * 1e3, 3),
                  "error": error.code if error else None,
                  "idempotency_key": run.key or None, "pid": channel.pid if channel else None}
        caller = run.caller.agent if run.caller.agent != OPERATOR else None
        await self._records.write(RunRecord(
            run.name, origin.stamp(detail), run.sets if error is None else {},
            run.deletes if error is None else [], outcome.logs if outcome else (),
            caller=caller))


@dataclass(slots=True)
class _Run:
    name: str
    key: str
    caller: Caller
    started: float
    channel: Channel | None = None
    outcome: RunOutcome | None = None
    error: NaosError | None = None
    sets: dict[str, bytes] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
