"""Tool servers: the MCP servers naos is a client of (pure: stdlib and
``naosd.errors`` only; no I/O, no clock).

What an operator registers (:class:`ServerDef`, checked by :func:`server_def`
whether it comes from ``naosctl mcp add`` or from the database), what a
server's ``tools/list`` becomes (:func:`listing`: names checked, sizes
bounded, each tool's OpenAI function name), how an agent names a tool
(:func:`split_tool`) and what a call costs (:meth:`ServerDef.price_of`).

Names.  A server's name is an agent-style name (lower-case letters, digits,
hyphens): never a dot nor an underscore.  So:

* ``server.tool`` is split at the first dot (MCP tool names may hold dots);
* the OpenAI-safe function name of a tool is ``server__tool``, the tool's
  characters outside ``[A-Za-z0-9_-]`` replaced by ``_``; it is split at the
  first ``__`` and the tool is found by its function name in the server's
  listing.  A tool whose function name passes 64 characters or collides with
  another tool's of the same server is not offered to LLMs (it stays
  callable as ``server.tool``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from naosd.errors import InvalidRequest, UnknownTool

TRANSPORTS: Final = ("stdio", "http")
NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,63}")  # as agents' (definitions.NAME_RE)
TOOL_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")  # the MCP spec's tool names
FUNCTION_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's function names
ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
FUNCTION_SEP: Final = "__"
MAX_PRICE_MICRO: Final = 10**9  # $1,000 a call
MAX_ARGS: Final = 256
MAX_ARG_CHARS: Final = 4096
MAX_ENV: Final = 64
MAX_ENV_VALUE: Final = 8192
MAX_URL_CHARS: Final = 2048
MAX_TOOLS: Final = 1000  # per server: more are skipped
MAX_SCHEMA_BYTES: Final = 64 * 1024  # a tool's inputSchema (as agents' input_schema)
MAX_DESCRIPTION: Final = 4096
MAX_FUNCTION_DESCRIPTION: Final = 1024  # what an LLM is offered
MAX_RESULT_BYTES: Final = 1 << 20  # a tool's answer handed to an agent
RESERVED_ENV_PREFIX: Final = "NAOS_"  # naosd's own settings and secrets
LOOPBACK_NAMES: Final = ("localhost",)


def validate_server_name(name: object) -> str:
    """``name`` if it is a valid server name, else InvalidRequest saying the rule."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidRequest(
            f"invalid tool server name {name!r}: use lower-case letters, digits and hyphens, "
            "starting with a letter, at most 64 characters (no dots: an agent calls "
            "SERVER.TOOL)")
    return name


@dataclass(frozen=True, slots=True)
class ServerDef:
    """A registered MCP server.  ``env`` values and the token are secrets:
    :meth:`public` shows the env's keys and where the token comes from only."""

    name: str
    transport: str  # stdio or http
    command: tuple[str, ...] = ()  # stdio: argv
    cwd: str = ""  # stdio: where it runs (absolute)
    env: Mapping[str, str] = field(default_factory=dict)  # stdio: added to a minimal env
    url: str = ""  # http: the Streamable HTTP endpoint
    token_file: str = ""  # http: a 0600 file holding the bearer token
    token_env: str = ""  # http: or naosd's environment variable holding it
    price_micro: int = 0  # per call
    tool_prices: Mapping[str, int] = field(default_factory=dict)  # per tool, over price_micro
    created_at: str = ""

    def price_of(self, tool: str) -> int:
        """What one call of ``tool`` costs (micro-dollars)."""
        return self.tool_prices.get(tool, self.price_micro)

    def to_json(self) -> dict[str, Any]:
        """Everything, for the database (which holds the env's values)."""
        return {"name": self.name, "transport": self.transport, "command": list(self.command),
                "cwd": self.cwd, "env": dict(self.env), "url": self.url,
                "token_file": self.token_file, "token_env": self.token_env,
                "price_micro": self.price_micro, "tool_prices": dict(self.tool_prices),
                "created_at": self.created_at}

    def public(self) -> dict[str, Any]:
        """What may be shown and audited: no env value, no token."""
        out = self.to_json()
        out["env"] = sorted(self.env)
        out["token"] = ("file" if self.token_file else "env" if self.token_env else None)
        return out


def server_def(raw: Mapping[str, Any]) -> ServerDef:
    """Check a definition (from ``mcp add``'s parameters or the database).

    ``env`` and ``tool_prices`` may be maps or lists of ``K=V`` texts.

    Raises:
        InvalidRequest: naming the field and the rule it breaks.
    """
    name = validate_server_name(raw.get("name"))
    transport = raw.get("transport")
    if transport not in TRANSPORTS:
        raise InvalidRequest(f"tool server {name}: transport must be stdio (--command) or "
                             f"http (--url), got {transport!r}")
    common = {"name": name, "transport": transport,
              "price_micro": _price(raw.get("price_micro", 0), "price_micro"),
              "tool_prices": _tool_prices(raw.get("tool_prices") or {}),
              "created_at": _text(raw.get("created_at", ""), "created_at", 64)}
    if transport == "stdio":
        _absent(raw, name, ("url", "token_file", "token_env"), "a stdio (--command) server")
        return ServerDef(command=_command(raw.get("command")),
                         cwd=_absolute(raw.get("cwd") or "/", "cwd"),
                         env=_env(raw.get("env") or {}), **common)
    _absent(raw, name, ("command", "env", "cwd"), "an http (--url) server")
    url = check_url(raw.get("url"))
    token_file = raw.get("token_file") or ""
    token_env = raw.get("token_env") or ""
    if token_file and token_env:
        raise InvalidRequest(f"tool server {name}: give --token-file or --token-env, not both")
    if token_file:
        token_file = _absolute(token_file, "token_file")
    if token_env:
        token_env = _token_env(token_env)
    if (token_file or token_env) and not _safe_for_token(url):
        raise InvalidRequest(f"tool server {name}: a bearer token is only sent over https, "
                             f"or http to this host (127.0.0.1, ::1, localhost); got {url}")
    return ServerDef(url=url, token_file=token_file, token_env=token_env, **common)


def check_url(url: object) -> str:
    """An http(s) URL with a host and no credentials in it."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"url: an http(s) URL of at most {MAX_URL_CHARS} characters "
                             "is required")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidRequest(f"url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"url {url!r}: an http:// or https:// URL with a host is required")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"url {parts.hostname}: credentials in the URL would be shown and "
                             "audited; use --token-file or --token-env")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidRequest(f"url {url!r}: spaces or control characters")
    return url


def _safe_for_token(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _absent(raw: Mapping[str, Any], name: str, keys: Sequence[str], what: str) -> None:
    given = [k for k in keys if raw.get(k)]
    if given:
        raise InvalidRequest(f"tool server {name}: {', '.join(given)} (--"
                             f"{', --'.join(g.replace('_', '-') for g in given)}) "
                             f"do not apply to {what}")


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        raise InvalidRequest(f"{what}: a string of at most {limit} characters is required")
    return value


def _absolute(value: object, what: str) -> str:
    text = _text(value, what, MAX_ARG_CHARS)
    if not text.startswith("/"):
        raise InvalidRequest(f"{what}: an absolute path is required, got {text!r}")
    return text


def _command(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or len(value) > MAX_ARGS:
        raise InvalidRequest(f"command: a program and at most {MAX_ARGS - 1} arguments "
                             "are required")
    argv = tuple(_text(a, "command argument", MAX_ARG_CHARS) for a in value)
    if not argv[0]:
        raise InvalidRequest("command: the program is empty")
    return argv


def pairs(items: object, what: str) -> dict[str, str]:
    """``["K=V", ...]`` (or a map) -> ``{K: V}``; a key given twice is refused."""
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    if not isinstance(items, list | tuple):
        raise InvalidRequest(f"{what}: a list of KEY=VALUE texts is required")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise InvalidRequest(f"{what}: {item!r} is not KEY=VALUE")
        key, _, value = item.partition("=")
        if key in out:
            raise InvalidRequest(f"{what}: {key!r} is given twice")
        out[key] = value
    return out


def _env(items: object) -> dict[str, str]:
    env = pairs(items, "env")
    if len(env) > MAX_ENV:
        raise InvalidRequest(f"env: at most {MAX_ENV} variables")
    for key, value in env.items():
        if not ENV_KEY_RE.fullmatch(key):
            raise InvalidRequest(f"env: {key!r} is not a variable name")
        _text(value, f"env {key}", MAX_ENV_VALUE)
    return env


def _token_env(name: object) -> str:
    if not isinstance(name, str) or not ENV_KEY_RE.fullmatch(name):
        raise InvalidRequest(f"token_env: {name!r} is not a variable name")
    if name.upper().startswith(RESERVED_ENV_PREFIX):
        raise InvalidRequest(f"token_env: ${name} is one of naosd's own settings (NAOS_*); "
                             "naos never sends them to a tool server")
    return name


def _price(value: object, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not \
            0 <= value <= MAX_PRICE_MICRO:
        raise InvalidRequest(f"{what}: micro-dollars from 0 to {MAX_PRICE_MICRO:,} are "
                             f"required, got {value!r}")
    return value


def _tool_prices(items: object) -> dict[str, int]:
    prices = {}
    for tool, price in pairs(items, "tool_prices").items():
        if not TOOL_NAME_RE.fullmatch(tool):
            raise InvalidRequest(f"tool_prices: {tool!r} is not a tool name "
                                 "(letters, digits, '_', '.', '-')")
        prices[tool] = _price(price, f"tool price of {tool}")
    return prices


# -- what a server offers --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """One tool of one server, as agents and LLMs see it."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    title: str = ""
    function: str | None = None  # the OpenAI function name; None: not offered to LLMs
    note: str = ""  # why it is not offered

    @property
    def qualified(self) -> str:
        return f"{self.server}.{self.name}"

    def spec(self) -> dict[str, Any]:
        """The OpenAI-style function tool ``ctx.llm.chat(tools=...)`` takes."""
        about = self.description or self.title or self.qualified
        return {"type": "function", "function": {
            "name": self.function, "description": about[:MAX_FUNCTION_DESCRIPTION],
            "parameters": self.input_schema}}

    def to_json(self, price_micro: int) -> dict[str, Any]:
        return {"server": self.server, "name": self.name, "tool": self.qualified,
                "function": self.function, "title": self.title,
                "description": self.description, "input_schema": self.input_schema,
                "price_micro": price_micro, **({"note": self.note} if self.note else {})}


@dataclass(frozen=True, slots=True)
class Listing:
    """A server's tools as last listed, and what was skipped and why."""

    tools: tuple[ToolInfo, ...] = ()
    skipped: tuple[str, ...] = ()

    def find(self, name: str) -> ToolInfo | None:
        return next((t for t in self.tools if t.name == name), None)

    def by_function(self, function: str) -> ToolInfo | None:
        return next((t for t in self.tools if t.function == function), None)


def function_name(server: str, tool: str) -> str:
    return f"{server}{FUNCTION_SEP}{re.sub(r'[^A-Za-z0-9_-]', '_', tool)}"


def listing(server: str, raw: Iterable[Mapping[str, Any]]) -> Listing:
    """A server's ``tools/list`` (wire dicts) as a Listing: bad or duplicate
    names, non-object or oversized schemas and tools past :data:`MAX_TOOLS`
    are skipped, each with its reason."""
    kept: list[ToolInfo] = []
    skipped: list[str] = []
    for item in raw:
        problem, info = _tool(server, item, {t.name for t in kept})
        if info is None:
            skipped.append(problem)
        elif len(kept) >= MAX_TOOLS:
            skipped.append(f"{info.name}: more than {MAX_TOOLS} tools")
        else:
            kept.append(info)
    return Listing(_with_functions(server, kept), tuple(skipped))


def _tool(server: str, item: Mapping[str, Any], seen: set[str]
          ) -> tuple[str, ToolInfo | None]:
    name = item.get("name")
    shown = repr(name)[:140]
    if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
        return f"{shown}: not a valid tool name", None
    if name in seen:
        return f"{name}: listed twice", None
    schema = item.get("inputSchema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return f"{name}: its inputSchema is not an object schema", None
    if len(json.dumps(schema, default=str)) > MAX_SCHEMA_BYTES:
        return f"{name}: its inputSchema is over {MAX_SCHEMA_BYTES // 1024} KiB", None
    description = item.get("description")
    title = item.get("title")
    return "", ToolInfo(server, name,
                        description[:MAX_DESCRIPTION] if isinstance(description, str) else "",
                        schema, title[:200] if isinstance(title, str) else "")


def _with_functions(server: str, tools: list[ToolInfo]) -> tuple[ToolInfo, ...]:
    names: dict[str, int] = {}
    for t in tools:
        fn = function_name(server, t.name)
        names[fn] = names.get(fn, 0) + 1
    out = []
    for t in tools:
        fn = function_name(server, t.name)
        if not FUNCTION_NAME_RE.fullmatch(fn):
            out.append(_note(t, f"its function name {fn} is over 64 characters"))
        elif names[fn] > 1:
            out.append(_note(t, f"its function name {fn} is shared with another tool"))
        else:
            out.append(ToolInfo(t.server, t.name, t.description, t.input_schema, t.title, fn))
    return tuple(out)


def _note(t: ToolInfo, why: str) -> ToolInfo:
    return ToolInfo(t.server, t.name, t.description, t.input_schema, t.title, None,
                    f"not offered to LLMs: {why}; call it as {t.qualified}")


def split_tool(tool: str) -> tuple[str, str, bool]:
    """``"server.tool"`` -> (server, tool, False); ``"server__fn"`` -> (server,
    fn, True): the function name, to look up in the server's listing.

    Raises:
        UnknownTool: neither form (naming both).
    """
    dot, under = tool.find("."), tool.find(FUNCTION_SEP)
    if dot > 0 and (under < 0 or dot < under):
        server, _, name = tool.partition(".")
        by_function = False
    elif under > 0:
        server, name, by_function = tool[:under], tool, True
    else:
        raise UnknownTool(f"no tool named {tool[:200]!r}: tools of registered tool servers are "
                          "called SERVER.TOOL (or SERVER__TOOL, their LLM function name)")
    if NAME_RE.fullmatch(server) is None or not name:
        raise UnknownTool(f"no tool named {tool[:200]!r}: {server[:80]!r} is not a tool "
                          "server's name")
    return server, name, by_function


# -- what a call answers ------------------------------------------------------------------


def result_text(content: Iterable[Mapping[str, Any]]) -> str:
    """The text blocks of a tool result, one per line; other blocks named."""
    parts = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind == "resource_link":
            parts.append(f"[resource {block.get('uri', '')}]")
        else:
            parts.append(f"[{kind} {block.get('mimeType', '')}]".replace(" ]", "]"))
    return "\n".join(parts)


def result_size(result: Mapping[str, Any]) -> int:
    """Bytes of ``result`` as JSON (what the agent's channel carries)."""
    return len(json.dumps(result, default=str, ensure_ascii=False).encode())
