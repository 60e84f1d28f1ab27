"""What MCP clients see of naos, as plain MCP wire data (pure: stdlib only).

Tools, one per definition: ``agent_NAME`` (run the agent once),
``saga_NAME`` and ``workflow_NAME`` (run it and wait for its outcome),
``skill_NAME`` (a broker skill, pinned).  The names keep to
``[A-Za-z0-9_-]``: the MCP spec also allows dots, but hosts hand tool names on
to LLM APIs that do not (OpenAI's and Anthropic's function names are
``^[a-zA-Z0-9_-]+$``).  naos names never contain ``_``, so the first ``_``
separates the kind from the name.

Resources: ``naos://status`` and ``naos://audit/recent``.

Results are ``CallToolResult`` objects: a text block for the model and
``structuredContent`` for programs; a run that failed has ``isError: true``
and ``structuredContent.error = {code, message}`` with the naos error code.
A tool or resource that does not exist is not a result: the gateway raises
``not_found`` and the transports answer with a protocol error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

KINDS: Final = ("agent", "saga", "workflow", "skill")
NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,63}")  # actors.domain.definitions.NAME_RE
RUN_KINDS: Final = ("saga", "workflow")
RUN_OK: Final = "completed"
RUN_FAILED: Final = ("compensated", "compensation_failed", "failed", "cancelled")
AWAITING: Final = "awaiting_approval"  # a person decides (naosctl approve|reject RUN)

ANY_OBJECT: Final[dict[str, Any]] = {"type": "object", "additionalProperties": True}
SKILL_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"task": {"type": "string", "description": "the task text the skill works on"}},
    "required": ["task"],
    "additionalProperties": False,
}
AUDIT_RECENT_ROWS: Final = 50
RESOURCES: Final[tuple[dict[str, Any], ...]] = (
    {"uri": "naos://status", "name": "status", "title": "naosd status",
     "description": "Version, uptime, pid and the actor tree with each agent's state.",
     "mimeType": "application/json"},
    {"uri": "naos://audit/recent", "name": "audit-recent", "title": "Recent audit rows",
     "description": f"The last {AUDIT_RECENT_ROWS} rows of the hash-chained audit log.",
     "mimeType": "application/json"},
)


@dataclass(frozen=True, slots=True)
class ToolRef:
    kind: str  # one of KINDS
    name: str  # the agent, saga, workflow or skill

    @property
    def tool(self) -> str:
        return tool_name(self.kind, self.name)


def tool_name(kind: str, name: str) -> str:
    return f"{kind}_{name}"


def parse_tool(tool: str, patterns: tuple[str, ...]) -> ToolRef | None:
    """What ``tool`` names, if it is ``KIND_NAME`` with a known kind and a naos
    name and is exposed (``mcp.tools``); None otherwise.  Whether that
    definition exists is for the caller to find out."""
    kind, _, name = tool.partition("_")
    if kind not in KINDS or not NAME_RE.fullmatch(name) or not exposed(tool, patterns):
        return None
    return ToolRef(kind, name)


def exposed(tool: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``tool`` matches one of the configured glob patterns (``mcp.tools``)."""
    return any(fnmatchcase(tool, p) for p in patterns)


# -- tools -----------------------------------------------------------------------


def agent_tool(view: dict[str, Any], fallback: str = "") -> dict[str, Any]:
    """The tool of one agent (an ``agent.list`` entry); its config may declare
    ``description`` and ``input_schema`` (``naos.toml``)."""
    config = view.get("config") or {}
    about = config.get("description") or fallback or f"naos agent {view['name']}"
    return _tool(ToolRef("agent", view["name"]),
                 f"{about.rstrip('.')}. Runs the agent once: the arguments are its message, "
                 "the result is its reply.",
                 config.get("input_schema") or ANY_OBJECT)


def run_tool(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The tool of one saga or workflow definition (a ``saga.list`` entry)."""
    steps = " -> ".join(f"{s['name']} ({s['agent'] or 'a person approves'})"
                        for s in spec.get("steps", []))
    ending = ("completed, or compensated with the failing step's error" if kind == "saga"
              else "completed, or failed with the failing step's error")
    return _tool(ToolRef(kind, spec["name"]),
                 f"Run the naos {kind} {spec['name']!r} ({steps or 'no steps'}) with the "
                 f"arguments as its input, and wait for its outcome: {ending}.",
                 ANY_OBJECT)


def skill_tool(skill: dict[str, Any]) -> dict[str, Any]:
    """The tool of one broker skill (a ``broker.skills`` entry)."""
    price = skill.get("price_micro", 0)
    return _tool(ToolRef("skill", skill["name"]),
                 f"{skill.get('description', '').rstrip('.') or skill['name']}. A naos broker "
                 f"skill ({skill['kind']}, {price} micro-dollars a task): trust-gated and "
                 "charged to this client's identity.",
                 SKILL_SCHEMA)


def _tool(ref: ToolRef, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": ref.tool, "title": f"{ref.kind} {ref.name}", "description": description,
            "inputSchema": schema}


def skill_route(skill: dict[str, Any]) -> str:
    """``broker.execute``'s pinned route for a skill: ``skill:NAME`` or ``wasm:NAME``."""
    return f"{skill['kind']}:{skill['name']}"


# -- results ---------------------------------------------------------------------


def succeeded(structured: dict[str, Any], text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "structuredContent": jsonable(structured),
            "isError": False}


def failed(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """A tool result for a call that ran (or was refused by a gate) and failed."""
    return {"content": [{"type": "text", "text": f"{code}: {message}"}],
            "structuredContent": {"error": {"code": code, "message": message}, **extra},
            "isError": True}


def agent_result(reply: dict[str, Any]) -> dict[str, Any]:
    """An ``agent.run`` reply as a tool result: the output as text, the reply as data."""
    return succeeded(reply, as_text(reply.get("output")))


def skill_result(result: dict[str, Any]) -> dict[str, Any]:
    """A ``broker.execute`` result: the skill's output as text."""
    return succeeded(result, as_text(result.get("output")))


def run_result(view: dict[str, Any], waited_s: float) -> dict[str, Any]:
    """A saga or workflow run (``saga.status`` view) as a tool result."""
    status, run_id = view["status"], view["run_id"]
    if status == RUN_OK:
        outputs = {s["name"]: s.get("output") for s in view.get("steps", [])}
        return succeeded({"run": view, "outputs": outputs},
                         f"{view['kind']} run {run_id} completed; step outputs: "
                         f"{as_text(outputs)}")
    if status in RUN_FAILED:
        return failed(status, view.get("error") or f"the run ended {status}", run=view)
    if status == AWAITING:
        step = (view.get("awaiting") or {}).get("step", "?")
        return succeeded({"run": view, "still_running": True, "awaiting_approval": step},
                         f"{view['kind']} run {run_id} awaits a person's approval of step "
                         f"{step} (naosctl approve|reject {run_id}).")
    return succeeded({"run": view, "still_running": True},
                     f"{view['kind']} run {run_id} is still {status} after {waited_s:g}s; "
                     f"naos carries it on (naosctl {view['kind']} status {run_id}).")


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           default=str)


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: an agent may answer with what msgpack allows
    and JSON does not (bytes become their ``str()``)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def resource_contents(uri: str, data: Any) -> dict[str, Any]:
    """A ``resources/read`` result holding ``data`` as JSON text."""
    return {"contents": [{"uri": uri, "mimeType": "application/json",
                          "text": json.dumps(data, ensure_ascii=False, default=str)}]}
