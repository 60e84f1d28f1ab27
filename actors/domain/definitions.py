"""Agent and supervisor definitions: what a user declares (pure, picklable).

Definitions live in SQLite (``naosd.storage.definitions``) and in project files
(``naos.toml``); supervisors read their own from the database every time they
start, so a restarted supervisor always runs the current tree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Final

from actors.domain.wasm_abi import WASM_GRANTS
from naosd.errors import InvalidRequest

NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")  # used with fullmatch
SOURCE_KINDS = ("template", "python", "wasm")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES = ("permanent", "transient", "temporary")
DESIRED = ("running", "stopped")
IMPLICIT_SUPERVISOR = "agents"  # where agents outside any user supervisor live


def validate_name(name: object, what: str = "agent") -> str:
    """Return ``name`` if it is a valid agent/supervisor name, else raise
    InvalidRequest saying what the rule is."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidRequest(
            f"invalid {what} name {name!r}: use lowercase letters, digits and hyphens, "
            "starting with a letter, at most 64 characters"
        )
    return name


def normalise_choice(value: str, options: tuple[str, ...], what: str) -> str:
    text = value.replace("-", "_").lower()
    if text not in options:
        allowed = ", ".join(o.replace("_", "-") for o in options)
        raise InvalidRequest(f"invalid {what} {value!r}: use one of {allowed}")
    return text


@dataclass(frozen=True, slots=True)
class AgentDef:
    name: str
    source_kind: str  # template | python | wasm
    source: str  # template name or absolute path
    config: dict[str, Any] = field(default_factory=dict)
    supervisor: str | None = None  # None: the implicit "agents" supervisor
    restart: str = "permanent"
    position: int = 0
    desired: str = "stopped"
    shutdown_timeout_s: float = 5.0
    created_at: str = ""
    requires: tuple[str, ...] = ()  # placement: capabilities and/or "node=NAME"
    execution: dict[str, Any] = field(default_factory=dict)  # see check_execution

    def validated(self) -> AgentDef:
        validate_name(self.name)
        from actors.domain.placement import parse_requirements

        parse_requirements(self.requires)
        if self.name == IMPLICIT_SUPERVISOR:
            raise InvalidRequest(f"the name {self.name!r} is reserved")
        if self.source_kind not in SOURCE_KINDS:
            raise InvalidRequest(f"unknown agent source kind {self.source_kind!r}")
        normalise_choice(self.restart, RESTART_TYPES, "restart type")
        if not 0 < self.shutdown_timeout_s <= 3600:
            raise InvalidRequest("shutdown timeout must be between 0 and 3600 seconds")
        check_tool_config(self.config)
        check_execution(self.execution)
        wasm = sorted(set(self.execution.get("grants", ())) & set(WASM_GRANTS))
        if wasm and self.source_kind != "wasm":
            raise InvalidRequest(f"grants {', '.join(wasm)} are WASM host functions; agent "
                                 f"{self.name!r} is a {self.source_kind} agent (its ctx "
                                 "offers these calls without a grant)")
        return self

    @property
    def wasm_grants(self) -> list[str]:
        """The ``naos`` host functions its execution settings grant (WASM agents)."""
        return [g for g in self.execution.get("grants", ()) if g in WASM_GRANTS]

    @property
    def max_concurrency(self) -> int:
        return int(self.execution.get("max_concurrency", 1))

    @property
    def confinement(self) -> str:
        return str(self.execution.get("confinement", "full"))

    @property
    def parent(self) -> str:
        return self.supervisor or IMPLICIT_SUPERVISOR

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source_kind": self.source_kind, "source": self.source,
                "config": self.config, "supervisor": self.supervisor,
                "restart": self.restart, "desired": self.desired,
                "shutdown_timeout_s": self.shutdown_timeout_s, "created_at": self.created_at,
                "requires": list(self.requires), "execution": public_execution(self.execution)}


@dataclass(frozen=True, slots=True)
class SupervisorDef:
    name: str
    strategy: str = "one_for_one"
    max_restarts: int = 3
    window_s: float = 5.0
    backoff_initial_s: float = 0.0
    backoff_max_s: float = 0.0
    parent: str | None = None  # None: a top-level supervisor under root
    restart: str = "permanent"
    position: int = 0
    desired: str = "stopped"
    created_at: str = ""
    # "supervisor" (OTP: too many restarts and the whole supervisor gives up)
    # or "child" (each child fails alone; the implicit supervisor only)
    intensity: str = "supervisor"

    def validated(self) -> SupervisorDef:
        validate_name(self.name, "supervisor")
        if self.name in (IMPLICIT_SUPERVISOR, "root", "heartbeat"):
            raise InvalidRequest(f"the name {self.name!r} is reserved")
        normalise_choice(self.strategy, STRATEGIES, "strategy")
        normalise_choice(self.restart, RESTART_TYPES, "restart type")
        if self.max_restarts < 0:
            raise InvalidRequest("max restarts must be 0 or more")
        if self.window_s <= 0:
            raise InvalidRequest("the restart window must be longer than 0 seconds")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise InvalidRequest("backoff: need 0 <= initial <= max")
        if self.parent == self.name:
            raise InvalidRequest("a supervisor cannot supervise itself")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strategy": self.strategy,
                "max_restarts": self.max_restarts, "window_s": self.window_s,
                "backoff_initial_s": self.backoff_initial_s,
                "backoff_max_s": self.backoff_max_s, "parent": self.parent,
                "restart": self.restart, "desired": self.desired,
                "created_at": self.created_at}


# what an update may change: name, position, desired and created_at stay
AGENT_FIELDS = ("source_kind", "source", "config", "supervisor", "restart",
                "shutdown_timeout_s", "requires", "execution")
SUPERVISOR_FIELDS = ("strategy", "max_restarts", "window_s", "backoff_initial_s",
                     "backoff_max_s", "parent", "restart")


def changed_fields(old: AgentDef | SupervisorDef, new: AgentDef | SupervisorDef) -> list[str]:
    """The definition fields an update from ``old`` to ``new`` changes."""
    fields = AGENT_FIELDS if isinstance(old, AgentDef) else SUPERVISOR_FIELDS
    return [f for f in fields if getattr(old, f) != getattr(new, f)]


def implicit_supervisor() -> SupervisorDef:
    """The supervisor of agents that belong to no user supervisor: each agent
    on its own (per-child intensity), so one agent's crash loop never touches
    another. An agent is restarted at once after a healthy run; after that,
    with a backoff from 0.5 s doubling to 30 s; more than 5 crashes in a row,
    each within 10 s of its start, and it is failed (not restarted until an
    operator starts it). The supervisor itself never gives up."""
    return SupervisorDef(IMPLICIT_SUPERVISOR, "one_for_one", max_restarts=5, window_s=10.0,
                         backoff_initial_s=0.5, backoff_max_s=30.0, desired="running",
                         intensity="child")


MAX_DESCRIPTION: Final = 1024
MAX_SCHEMA_BYTES: Final = 64 * 1024
_MAX_DEPTH: Final = 32


def check_tool_config(config: dict[str, Any]) -> None:
    """Check the config keys that describe an agent to MCP clients (docs/interop.md):
    ``description`` (text) and ``input_schema`` (a JSON Schema for an object).

    Raises:
        InvalidRequest: naming the key and the rule it breaks.
    """
    text = config.get("description")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_DESCRIPTION):
        raise InvalidRequest(f"config.description: expected text of at most "
                             f"{MAX_DESCRIPTION} characters")
    if "input_schema" in config:
        check_input_schema(config["input_schema"])


def check_input_schema(schema: object) -> dict[str, Any]:
    """``schema`` if it can be a tool's input schema: a JSON Schema object whose
    ``type`` is ``"object"`` (an MCP tool takes a JSON object), made of JSON
    values only, at most 64 KiB.  Whether it is a *valid* JSON Schema is checked
    when it is used (``jsonschema``, with the ``mcp`` extra)."""
    where = "config.input_schema"
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where}: expected a JSON Schema object (a table)")
    if schema.get("type") != "object":
        raise InvalidRequest(f'{where}.type: must be "object" (MCP tools take a JSON object)')
    _json_only(schema, where, 0)
    if not isinstance(schema.get("properties", {}), dict):
        raise InvalidRequest(f"{where}.properties: expected a table of schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise InvalidRequest(f"{where}.required: expected a list of property names")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"{where}: larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    return schema


def _json_only(value: object, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidRequest(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(f"{where}: keys must be strings, got {key!r}")
            _json_only(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _json_only(item, f"{where}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise InvalidRequest(f"{where}: {type(value).__name__} is not a JSON value")


EXECUTION_KEYS: Final = frozenset({"acts_as", "max_concurrency", "confinement", "env", "cwd",
                                   "grants", "limits", "digest"})
CONFINEMENTS: Final = ("full", "none")
GRANTS: Final = ("net", *WASM_GRANTS)  # net: confinement; the rest: WASM host functions
LIMIT_KEYS: Final = ("memory_mb", "cpu_seconds", "open_files", "processes")
MAX_CONCURRENCY: Final = 256


PATH_GRANTS: Final = ("read:", "write:")


def is_path_grant(grant: object) -> bool:
    """``read:/abs/path`` or ``write:/abs/path``: a confined handler may read
    (or read and write) beneath that path; the confinement layer refuses one
    that is not normalised or that reaches what naos protects."""
    return isinstance(grant, str) and grant.startswith(PATH_GRANTS) and \
        grant.partition(":")[2].startswith("/")


def check_execution(execution: dict[str, Any]) -> None:
    """How an agent's handler runs (docs/agents.md): ``max_concurrency`` (1 to
    256), ``confinement`` (full or none), ``env`` (names to text), ``cwd``,
    ``grants`` (net; for a WASM agent the ``naos`` host functions of
    docs/wasm-abi.md), ``limits`` (memory_mb, cpu_seconds, open_files,
    processes: whole numbers >= 0), ``digest`` (its code snapshot's sha256),
    ``acts_as`` (a pool's clone: the agent it is charged and gated as; set by
    naosd when it clones, never by a create parameter).
    The confinement layer checks paths and limits in depth when it starts.

    Raises:
        InvalidRequest: naming the key and the rule it breaks.
    """
    if not isinstance(execution, dict):
        raise InvalidRequest("execution must be a table")
    unknown = set(execution) - EXECUTION_KEYS
    if unknown:
        raise InvalidRequest(f"unknown agent setting(s): {', '.join(sorted(unknown))}")
    n = execution.get("max_concurrency", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CONCURRENCY:
        raise InvalidRequest(f"max_concurrency must be a whole number from 1 to "
                             f"{MAX_CONCURRENCY}, got {n!r}")
    if execution.get("confinement", "full") not in CONFINEMENTS:
        raise InvalidRequest(f"confinement must be full or none, got "
                             f"{execution.get('confinement')!r}")
    env = execution.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise InvalidRequest("env must map names to text")
    if not isinstance(execution.get("cwd", ""), str):
        raise InvalidRequest("cwd must be a path")
    grants = execution.get("grants", [])
    if not isinstance(grants, list) or not all(
            g in GRANTS or is_path_grant(g) for g in grants):
        raise InvalidRequest(f"grants must be a list of {', '.join(GRANTS)}, "
                             f"read:/ABS/PATH or write:/ABS/PATH, got {grants!r}")
    limits = execution.get("limits", {})
    if not isinstance(limits, dict) or not set(limits) <= set(LIMIT_KEYS) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for v in limits.values()):
        raise InvalidRequest(f"limits must map {', '.join(LIMIT_KEYS)} to whole numbers >= 0")
    acts_as = execution.get("acts_as", "")
    if not isinstance(acts_as, str) or (acts_as and not NAME_RE.fullmatch(acts_as)):
        raise InvalidRequest(f"acts_as must be an agent name, got {acts_as!r}")
    digest = execution.get("digest", "")
    if not isinstance(digest, str) or (digest and not re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise InvalidRequest("digest must be a sha256 in hex")


def public_execution(execution: dict[str, Any]) -> dict[str, Any]:
    """What views show of it: env values are secrets of the agent's, only names show."""
    out = dict(execution)
    if "env" in out:
        out["env"] = dict.fromkeys(out["env"], "(set)")
    return out
