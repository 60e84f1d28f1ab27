"""MCP tool calls as control-method calls, made for the MCP identity.

The gateway is not a second implementation of anything: it lists the current
definitions through the read methods (``agent.list``, ``saga.list``,
``workflow.list``, ``broker.skills``) and runs a tool through the method the
CLI uses for it, with the parameters the CLI would send, so the trust gate,
the budgets and the audit rows apply unchanged:

=============  ===============================================================
tool           control methods
=============  ===============================================================
agent_NAME     ``agent.run`` (the arguments are the message)
saga_NAME      ``saga.run``, then ``saga.wait`` until it ends or ``mcp.run_wait``
workflow_NAME  ``workflow.run``, then ``workflow.wait`` (likewise)
skill_NAME     ``broker.execute`` with ``agent`` = the identity and ``route``
               pinned to the skill (the task text cannot move it)
=============  ===============================================================

Every call runs inside :func:`naosd.storage.origin.acting_for`, so the rows it
causes say ``via: "mcp"`` and ``as: IDENTITY``, and ends with one ``mcp.call``
audit row (tool, transport, outcome).  Built from narrow parts: a
:class:`ControlApi`, the settings, an audit writer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.domain.definitions import validate_name
from naosd.errors import InvalidRequest, NaosError, NotFound, RequestTimeout
from naosd.mcp import catalog
from naosd.mcp.catalog import ToolRef
from naosd.schemas import check_arguments, preload_jsonschema
from naosd.storage.origin import acting_for

__all__ = ["ControlApi", "Gateway", "Settings", "check_arguments"]

WAIT_STEP_S = 50.0  # one saga.wait at most (the method caps its timeout there)


class ControlApi(Protocol):
    """Control methods by name, checked by their own parameter specs."""

    async def call(self, method: str, /, **params: Any) -> Any: ...

    def stream(self, method: str, /, **params: Any) -> AsyncIterator[Any]: ...


@dataclass(frozen=True, slots=True)
class Settings:
    identity: str  # mcp.identity: whom calls are made for, unless the transport names one
    tools: tuple[str, ...]  # mcp.tools: glob patterns of the tools clients may see and call
    run_wait_s: float  # mcp.run_wait: how long a saga or workflow tool waits


Audit = Callable[..., Awaitable[Any]]  # AsyncStore.audit(type, actor=, agent=, **detail)


class Gateway:
    def __init__(self, api: ControlApi, settings: Callable[[], Settings], audit: Audit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._api = api
        self._settings = settings  # read at every call: a reload changes it
        self._audit = audit
        self._clock = clock

    # -- listing -------------------------------------------------------------------
    async def tools(self) -> list[dict[str, Any]]:
        """Every exposed tool, from the definitions as they are now."""
        from actors.templates import TEMPLATES

        tools = [catalog.agent_tool(a, TEMPLATES.get(a["source"], "")
                                    if a.get("source_kind") == "template" else "")
                 for a in await self._api.call("agent.list")]
        for kind in catalog.RUN_KINDS:
            tools += [catalog.run_tool(kind, spec)
                      for spec in await self._api.call(f"{kind}.list")]
        tools += [catalog.skill_tool(s) for s in await self._skills()]
        patterns = self._settings().tools
        return [t for t in tools if catalog.exposed(t["name"], patterns)]

    @staticmethod
    def resources() -> list[dict[str, Any]]:
        return [dict(r) for r in catalog.RESOURCES]

    async def read(self, uri: str) -> dict[str, Any]:
        """A resource's contents.  Raises NotFound for any other URI."""
        if uri == "naos://status":
            return catalog.resource_contents(uri, await self._api.call("status"))
        if uri == "naos://audit/recent":
            rows = [row async for row in self._api.stream(
                "audit.tail", n=catalog.AUDIT_RECENT_ROWS)]
            return catalog.resource_contents(uri, rows)
        raise NotFound(f"unknown resource {uri[:200]!r}")

    # -- calling -------------------------------------------------------------------
    async def call(self, tool: str, arguments: dict[str, Any] | None, *,
                   identity: str | None = None, transport: str) -> dict[str, Any]:
        """Run ``tool`` for ``identity`` (default: ``mcp.identity``); a failed run
        is a result with ``isError``.

        Raises:
            NotFound: no such tool for this client (audited first): the one error
                a call raises, so transports can answer it with a protocol error.
            InvalidRequest: ``identity`` is not a valid agent name.
        """
        settings = self._settings()
        who = validate_name(identity or settings.identity, "MCP identity")
        with acting_for("mcp", who):
            started = self._clock()
            ref = catalog.parse_tool(tool, settings.tools)
            target = None if ref is None else await self._find(ref)
            if ref is None or target is None:
                await self._record(tool, who, transport, None, NotFound.code, {})
                raise NotFound(f"unknown tool {tool[:200]!r}")
            try:
                result, related = await self._run(ref, target, arguments or {}, who,
                                                  settings.run_wait_s)
            except NaosError as exc:
                result, related = catalog.failed(exc.code, exc.message), {}
            error = result["structuredContent"]["error"]["code"] if result["isError"] else None
            await self._record(tool, who, transport, ref, error,
                               {**related, "ms": round((self._clock() - started) * 1e3, 3)})
        return result

    async def _record(self, tool: str, who: str, transport: str, ref: ToolRef | None,
                      error: str | None, detail: dict[str, Any]) -> None:
        await self._audit("mcp.call", actor=f"mcp:{who}",
                          agent=ref.name if ref is not None and ref.kind == "agent" else None,
                          tool=tool[:200], transport=transport, ok=error is None, error=error,
                          **detail)

    async def _find(self, ref: ToolRef) -> dict[str, Any] | None:
        """The definition behind ``ref`` as it is now, or None."""
        if ref.kind == "agent":
            try:
                agent: dict[str, Any] = await self._api.call("agent.inspect", name=ref.name,
                                                             logs=0)
                return agent
            except NotFound:
                return None
        found = await self._skills() if ref.kind == "skill" else await self._api.call(
            f"{ref.kind}.list")
        return next((d for d in found if d["name"] == ref.name), None)

    async def _run(self, ref: ToolRef, target: dict[str, Any], arguments: dict[str, Any],
                   who: str, wait_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a tool whose definition exists; a failure raises its NaosError."""
        if ref.kind == "agent":
            return await self._run_agent(ref.name, target, arguments), {}
        if ref.kind == "skill":
            return await self._run_skill(target, arguments, who)
        return await self._run_flow(ref, arguments, wait_s)

    async def _run_agent(self, name: str, agent: dict[str, Any], arguments: dict[str, Any]
                         ) -> dict[str, Any]:
        schema = (agent.get("config") or {}).get("input_schema")
        if schema is not None:
            await asyncio.to_thread(preload_jsonschema)  # its first import blocks ~0.1-0.3 s
            check_arguments(arguments, schema, f"agent {name!r}")
        return catalog.agent_result(await self._api.call("agent.run", name=name,
                                                         input=arguments))

    async def _run_skill(self, skill: dict[str, Any], arguments: dict[str, Any], who: str
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
        task = arguments.get("task")
        if set(arguments) != {"task"} or not isinstance(task, str):
            raise InvalidRequest('a skill tool takes exactly {"task": "<text>"}')
        result = await self._api.call("broker.execute", task=task, agent=who,
                                      route=catalog.skill_route(skill))
        return catalog.skill_result(result), {"task_id": result.get("task_id")}

    async def _run_flow(self, ref: ToolRef, arguments: dict[str, Any], wait_s: float
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
        started = await self._api.call(f"{ref.kind}.run", name=ref.name, input=arguments)
        run_id = started["run_id"]
        view = await self._wait(ref.kind, run_id, wait_s)
        return catalog.run_result(view, wait_s), {"run_id": run_id}

    async def _wait(self, kind: str, run_id: str, wait_s: float) -> dict[str, Any]:
        """The run once it ended, or as it is after ``wait_s`` seconds."""
        deadline = self._clock() + wait_s
        while (left := deadline - self._clock()) > 0:
            try:
                view: dict[str, Any] = await self._api.call(
                    f"{kind}.wait", run=run_id, timeout=min(left, WAIT_STEP_S))
                return view
            except RequestTimeout:
                continue  # still running: wait again until the deadline
        still: dict[str, Any] = await self._api.call(f"{kind}.status", run=run_id)
        return still

    async def _skills(self) -> list[dict[str, Any]]:
        listed = await self._api.call("broker.skills")
        skills: list[dict[str, Any]] = listed["skills"]
        return skills
