"""Project files (``naos.toml``): agents and supervision trees as text (pure).

::

    [agents.researcher]
    template = "echo"              # or: source = "agents/researcher.py" (or .wasm)
    config = { topic = "cats" }    # optional, any table
    shutdown_timeout = 5           # optional, seconds
    description = "Finds papers"   # optional: what MCP clients are told (docs/interop.md)
    input_schema = { type = "object", properties = { topic = { type = "string" } } }
                                   # optional: the JSON Schema of its input, for MCP clients

    [supervisors.main]
    strategy = "one-for-one"       # one-for-all, rest-for-one
    max_restarts = 3
    window = 60                    # seconds
    backoff = 0.5                  # optional first restart delay, doubling
    backoff_max = 10
    children = ["researcher", { name = "sub", restart = "transient" }]

Sagas, workflows and pools have their own sections (``[sagas.NAME]``,
``[workflows.NAME]``, ``[pools.NAME]``; see actors/domain/orch_defs.py); the
agents they name must be defined in the same file.  Every key is documented
in docs/naos-toml.md: keep it in step with this module and orch_defs.py.

Relative sources are resolved against the project file's directory.  Every
error names the key (``agents.researcher.source``) and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from actors.domain.definitions import (
    RESTART_TYPES,
    STRATEGIES,
    AgentDef,
    SupervisorDef,
    normalise_choice,
    validate_name,
)
from actors.domain.orch_defs import parse_sections
from naosd.errors import ConfigError, InvalidRequest

AGENT_KEYS = {"template", "source", "config", "shutdown_timeout", "requires", "description",
              "input_schema", "max_concurrency", "confinement", "env", "cwd", "grants", "limits"}
TOOL_KEYS = ("description", "input_schema")  # carried in the agent's config
SECTIONS = {"agents", "supervisors", "sagas", "workflows", "pools"}
SUPERVISOR_KEYS = {"strategy", "max_restarts", "window", "backoff", "backoff_max", "children"}


@dataclass(frozen=True, slots=True)
class Project:
    agents: tuple[AgentDef, ...]
    supervisors: tuple[SupervisorDef, ...]  # parents before children
    # "sagas", "workflows", "pools" -> their stored definitions (orch_defs drafts)
    orchestration: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def parse(doc: dict[str, Any], base: Path, *, origin: str = "naos.toml") -> Project:
    """Validate a parsed TOML document; raises ConfigError naming the key."""
    unknown = sorted(set(doc) - SECTIONS)
    if unknown:
        raise ConfigError(f"{origin}: {unknown[0]}: unknown section "
                          f"(use {', '.join(sorted(SECTIONS))})")
    agents = {n: _agent(n, t, base, origin) for n, t in _tables(doc, "agents", origin)}
    sups = {n: _supervisor(n, t, origin) for n, t in _tables(doc, "supervisors", origin)}
    clash = sorted(set(agents) & set(sups))
    if clash:
        raise ConfigError(f"{origin}: {clash[0]}: used both as an agent and a supervisor")
    agents, sups = _attach(doc.get("supervisors", {}), agents, sups, origin)
    orchestration = parse_sections(doc, set(agents), origin)
    return Project(tuple(agents.values()), tuple(_parents_first(sups)), orchestration)


def _tables(doc: dict[str, Any], section: str, origin: str) -> list[tuple[str, dict[str, Any]]]:
    tables = doc.get(section, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{origin}: {section}: expected tables like [{section}.NAME]")
    out = []
    for name, table in tables.items():
        key = f"{section}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {key}: expected a table")
        try:
            validate_name(name, section[:-1])
        except InvalidRequest as exc:
            raise ConfigError(f"{origin}: {key}: {exc}") from None
        out.append((name, table))
    return out


def _agent(name: str, t: dict[str, Any], base: Path, origin: str) -> AgentDef:
    key = f"agents.{name}"
    _no_unknown(t, AGENT_KEYS, key, origin)
    if ("template" in t) == ("source" in t):
        raise ConfigError(f"{origin}: {key}: give exactly one of template or source")
    config = t.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{origin}: {key}.config: expected a table")
    for tool_key in TOOL_KEYS:
        if tool_key in t:
            if tool_key in config:
                raise ConfigError(f"{origin}: {key}.{tool_key}: given twice (also in config)")
            config = {**config, tool_key: t[tool_key]}
    stop = _number(t.get("shutdown_timeout", 5.0), f"{key}.shutdown_timeout", origin)
    if "template" in t:
        kind, source = "template", _text(t["template"], f"{key}.template", origin)
    else:
        kind, source = _source(_text(t["source"], f"{key}.source", origin), base, key, origin)
    requires = t.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise ConfigError(f"{origin}: {key}.requires: expected a list of strings")
    execution: dict[str, Any] = {k: t[k] for k in ("max_concurrency", "confinement", "env",
                                                   "cwd", "grants", "limits") if k in t}
    return _checked(AgentDef(name, kind, source, config, shutdown_timeout_s=stop,
                             desired="running", requires=tuple(requires),
                             execution=execution), key, origin)


def _source(text: str, base: Path, key: str, origin: str) -> tuple[str, str]:
    path = (base / text).resolve()
    if path.is_dir():
        return "python", str(path)  # a package: its snapshot finds the entry file
    if path.suffix not in (".py", ".wasm"):
        raise ConfigError(f"{origin}: {key}.source: expected a .py or .wasm file, got {text!r}")
    if not path.is_file():
        raise ConfigError(f"{origin}: {key}.source: {path} does not exist")
    return ("python" if path.suffix == ".py" else "wasm"), str(path)


def _supervisor(name: str, t: dict[str, Any], origin: str) -> SupervisorDef:
    key = f"supervisors.{name}"
    _no_unknown(t, SUPERVISOR_KEYS, key, origin)
    try:
        strategy = normalise_choice(str(t.get("strategy", "one_for_one")), STRATEGIES,
                                    "strategy")
    except InvalidRequest as exc:
        raise ConfigError(f"{origin}: {key}.strategy: {exc}") from None
    max_restarts = t.get("max_restarts", 3)
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool):
        raise ConfigError(f"{origin}: {key}.max_restarts: expected an integer")
    return _checked(SupervisorDef(
        name, strategy, max_restarts, _number(t.get("window", 5.0), f"{key}.window", origin),
        _number(t.get("backoff", 0.0), f"{key}.backoff", origin),
        _number(t.get("backoff_max", t.get("backoff", 0.0)), f"{key}.backoff_max", origin),
        desired="running"), key, origin)


def _attach(tables: dict[str, Any], agents: dict[str, AgentDef],
            sups: dict[str, SupervisorDef], origin: str
            ) -> tuple[dict[str, AgentDef], dict[str, SupervisorDef]]:
    owner: dict[str, str] = {}
    for sup_name, table in tables.items():
        children = table.get("children", [])
        if not isinstance(children, list):
            raise ConfigError(f"{origin}: supervisors.{sup_name}.children: expected a list")
        for pos, entry in enumerate(children):
            key = f"supervisors.{sup_name}.children[{pos}]"
            child, restart = _child_entry(entry, key, origin)
            if child in owner:
                raise ConfigError(f"{origin}: {key}: {child!r} is already supervised by "
                                  f"{owner[child]!r}")
            owner[child] = sup_name
            if child in agents:
                agents[child] = replace(agents[child], supervisor=sup_name, restart=restart,
                                        position=pos)
            elif child in sups:
                sups[child] = replace(sups[child], parent=sup_name, restart=restart,
                                      position=pos)
            else:
                raise ConfigError(f"{origin}: {key}: no agent or supervisor named {child!r}")
    _no_cycles(sups, origin)
    return agents, sups


def _child_entry(entry: Any, key: str, origin: str) -> tuple[str, str]:
    if isinstance(entry, str):
        return entry, "permanent"
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        try:
            restart = normalise_choice(str(entry.get("restart", "permanent")), RESTART_TYPES,
                                       "restart type")
        except InvalidRequest as exc:
            raise ConfigError(f"{origin}: {key}.restart: {exc}") from None
        return entry["name"], restart
    raise ConfigError(f"{origin}: {key}: expected a name or {{ name = ..., restart = ... }}")


def _no_cycles(sups: dict[str, SupervisorDef], origin: str) -> None:
    for name in sups:
        seen: set[str] = set()
        current: str | None = name
        while current is not None:
            if current in seen:
                raise ConfigError(f"{origin}: supervisors.{name}: supervision cycle")
            seen.add(current)
            current = sups[current].parent if current in sups else None


def _parents_first(sups: dict[str, SupervisorDef]) -> list[SupervisorDef]:
    def depth(s: SupervisorDef) -> int:
        return 0 if s.parent is None else 1 + depth(sups[s.parent])

    return sorted(sups.values(), key=lambda s: (depth(s), s.name))


_Def = TypeVar("_Def", AgentDef, SupervisorDef)


def _checked(d: _Def, key: str, origin: str) -> _Def:
    try:
        return d.validated()
    except InvalidRequest as exc:
        raise ConfigError(f"{origin}: {key}: {exc}") from None


def _no_unknown(t: dict[str, Any], allowed: set[str], key: str, origin: str) -> None:
    extra = sorted(set(t) - allowed)
    if extra:
        raise ConfigError(f"{origin}: {key}.{extra[0]}: unknown key "
                          f"(allowed: {', '.join(sorted(allowed))})")


def _number(value: Any, key: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{origin}: {key}: expected a number, got {value!r}")
    return float(value)


def _text(value: Any, key: str, origin: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{origin}: {key}: expected a non-empty string")
    return value
