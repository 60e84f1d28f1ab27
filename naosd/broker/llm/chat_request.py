"""An agent's chat request, checked and bounded (pure: no I/O).

:func:`check_chat` turns the options of ``ctx.llm.chat`` into a
:class:`ChatRequest` or raises :class:`~naosd.errors.InvalidRequest` naming
the first bad field (``messages[2].role: ...``).  :func:`prompt_token_bound`
is the conservative input bound a reservation is made on, and
:func:`split_tool_calls` keeps the tool calls the model invented (a name not
offered in ``tools``) apart from the ones an agent may act on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from naosd.broker.llm.wire import CHAT_OVERHEAD_TOKENS, MAX_PROMPT_BYTES, token_bound
from naosd.errors import InvalidRequest

MAX_MESSAGES: Final = 1024
MAX_TOOLS: Final = 128
MAX_TOOLS_BYTES: Final = 256 * 1024
MAX_FORMAT_BYTES: Final = 64 * 1024
MAX_STOP: Final = 4
MAX_STOP_BYTES: Final = 256
MAX_OUTPUT_TOKENS: Final = 1_000_000
TOOLS_OVERHEAD_TOKENS: Final = 256
"""Tokens a chat template may add to introduce tools (instructions, markers)."""
ROLES: Final = ("system", "user", "assistant", "tool")
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
CHOICES: Final = ("none", "auto", "required")
FORMATS: Final = ("text", "json_object", "json_schema")
OPTIONS: Final = ("tools", "tool_choice", "response_format", "temperature", "top_p", "stop",
                  "seed", "max_tokens", "model")
"""What ``ctx.llm.chat`` takes besides ``messages``; sent on as given."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A checked request: ``messages`` and the options the caller gave."""

    messages: tuple[dict[str, Any], ...]
    options: dict[str, Any]  # keys of OPTIONS but max_tokens and model

    max_tokens: int | None = None
    model: str | None = None

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(t["function"]["name"] for t in self.options.get("tools") or ())


def check_chat(params: dict[str, Any]) -> ChatRequest:
    """``params`` (messages and OPTIONS) -> ChatRequest.

    Raises:
        InvalidRequest: naming the first field that is missing, unknown, of the
            wrong type, out of range or over its size limit.
    """
    unknown = sorted(set(params) - {"messages", *OPTIONS})
    if unknown:
        raise InvalidRequest(f"llm: unknown option(s) {', '.join(unknown)}")
    messages = _messages(params.get("messages"))
    options: dict[str, Any] = {}
    for key, check in _CHECKS.items():
        if params.get(key) is not None:
            options[key] = check(params[key])
    _check_choice(options)
    max_tokens = params.get("max_tokens")
    if max_tokens is not None:
        max_tokens = _int(max_tokens, "max_tokens", 1, MAX_OUTPUT_TOKENS)
    model = params.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise InvalidRequest("model: a non-empty model name is required")
    return ChatRequest(messages, options, max_tokens, model)


def _check_choice(options: dict[str, Any]) -> None:
    choice = options.get("tool_choice")
    offered = {t["function"]["name"] for t in options.get("tools") or ()}
    if choice is None or choice == "none":
        return
    if not offered:
        raise InvalidRequest(f"tool_choice: {choice!r} needs tools")
    if isinstance(choice, dict) and choice["function"]["name"] not in offered:
        raise InvalidRequest(f"tool_choice: names {choice['function']['name']!r}, "
                             "which is not among the tools offered")


def prompt_token_bound(request: ChatRequest) -> int:
    """An upper bound on the prompt tokens of ``request`` for byte-level BPE
    tokenizers: the bytes of the messages as compact JSON (each message's
    keys and quotes outweigh the template's markers around it) + the chat
    template's overhead; tools twice (templates pretty-print them) + their
    introduction; a response format once."""
    bound = token_bound(compact(request.messages)) + CHAT_OVERHEAD_TOKENS
    tools = request.options.get("tools")
    if tools:
        bound += 2 * token_bound(compact(tools)) + TOOLS_OVERHEAD_TOKENS
    if "response_format" in request.options:
        bound += token_bound(compact(request.options["response_format"]))
    return bound


def split_tool_calls(calls: Sequence[dict[str, Any]], offered: frozenset[str]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The tool calls an agent may act on, and the others with their reason:
    a name not among ``offered`` (the model invented it) or arguments that are
    not a JSON object."""
    valid: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for call in calls:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        reason = _tool_call_problem(name, arguments, offered)
        if reason is None:
            valid.append(call)
        else:
            invalid.append({"id": call["id"], "name": name, "arguments": arguments,
                            "reason": reason})
    return valid, invalid


def _tool_call_problem(name: str, arguments: str, offered: frozenset[str]) -> str | None:
    if name not in offered:
        what = ", ".join(sorted(offered)) if offered else "no tools were offered"
        return f"the model called {name!r}, which is not a tool it was offered ({what})"
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return f"the arguments of {name!r} are not JSON"
    if not isinstance(parsed, dict):
        return f"the arguments of {name!r} are not a JSON object"
    return None


def compact(value: Any) -> str:
    """``value`` as compact JSON with its text unescaped (bytes = UTF-8 bytes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- messages ----------------------------------------------------------------


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest("messages: a non-empty list of {role, content} maps is required")
    if len(value) > MAX_MESSAGES:
        raise InvalidRequest(f"messages: {len(value)} messages (limit {MAX_MESSAGES})")
    checked = tuple(_message(m, f"messages[{i}]") for i, m in enumerate(value))
    size = len(compact(checked).encode())
    if size > MAX_PROMPT_BYTES:
        raise InvalidRequest(f"messages: {size} bytes of JSON (limit {MAX_PROMPT_BYTES})")
    return checked


_MESSAGE_KEYS: Final = {"system": {"role", "content", "name"},
                        "user": {"role", "content", "name"},
                        "assistant": {"role", "content", "name", "tool_calls"},
                        "tool": {"role", "content", "tool_call_id"}}


def _message(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: a map with role and content is required")
    role = value.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"{where}.role: one of {', '.join(ROLES)} is required, "
                             f"got {role!r}")
    extra = sorted(set(value) - _MESSAGE_KEYS[role])
    if extra:
        raise InvalidRequest(f"{where}: unknown key(s) {', '.join(extra)} for a "
                             f"{role} message")
    out: dict[str, Any] = {"role": role}
    if "name" in value:
        out["name"] = _text(value["name"], f"{where}.name", 64)
    if role == "tool":
        out["tool_call_id"] = _text(value.get("tool_call_id"), f"{where}.tool_call_id", 256)
    if value.get("tool_calls"):  # an empty list is no tool calls
        out["tool_calls"] = _assistant_calls(value["tool_calls"], f"{where}.tool_calls")
    content = value.get("content")
    if content is None and "tool_calls" in out:
        out["content"] = None
    else:
        out["content"] = _content(content, f"{where}.content")
    return out


def _content(value: Any, where: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise InvalidRequest(f"{where}: text (or a list of text parts) is required")
    parts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text" or set(part) != {
                "type", "text"} or not isinstance(part["text"], str):
            raise InvalidRequest(f"{where}[{i}]: only {{type: text, text}} parts are "
                                 "accepted (other kinds cannot be bounded in tokens)")
        parts.append({"type": "text", "text": part["text"]})
    return parts


def _assistant_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise InvalidRequest(f"{where}: a list of at most {MAX_TOOLS} tool calls is required")
    calls = []
    for i, call in enumerate(value):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise InvalidRequest(f"{where}[{i}]: {{id, type: function, function: "
                                 "{name, arguments}} is required")
        calls.append({"id": _text(call.get("id"), f"{where}[{i}].id", 256), "type": "function",
                      "function": {"name": _tool_name(fn.get("name"), f"{where}[{i}].function"),
                                   "arguments": _text(fn.get("arguments", ""),
                                                      f"{where}[{i}].function.arguments",
                                                      MAX_PROMPT_BYTES, empty=True)}})
    return calls


# -- options -----------------------------------------------------------------


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or len(value) > MAX_TOOLS:
        raise InvalidRequest(f"tools: a list of 1 to {MAX_TOOLS} tools is required")
    tools, names = [], set()
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function" or set(tool) != {
                "type", "function"}:
            raise InvalidRequest(f"tools[{i}]: {{type: function, function: {{name, "
                                 "description, parameters}}}} is required")
        extra = sorted(set(fn) - {"name", "description", "parameters", "strict"})
        if extra:
            raise InvalidRequest(f"tools[{i}].function: unknown key(s) {', '.join(extra)}")
        name = _tool_name(fn.get("name"), f"tools[{i}].function")
        if name in names:
            raise InvalidRequest(f"tools[{i}].function.name: {name!r} is offered twice")
        names.add(name)
        _checked_fields(fn, f"tools[{i}].function")
        tools.append({"type": "function", "function": fn})
    size = len(compact(tools).encode())
    if size > MAX_TOOLS_BYTES:
        raise InvalidRequest(f"tools: {size} bytes of JSON (limit {MAX_TOOLS_BYTES})")
    return tools


def _checked_fields(fn: dict[str, Any], where: str) -> None:
    if "description" in fn:
        _text(fn["description"], f"{where}.description", MAX_TOOLS_BYTES, empty=True)
    if "parameters" in fn and not isinstance(fn["parameters"], dict):
        raise InvalidRequest(f"{where}.parameters: a JSON schema (a map) is required")
    if "strict" in fn and not isinstance(fn["strict"], bool):
        raise InvalidRequest(f"{where}.strict: true or false is required")


def _tool_choice(value: Any) -> str | dict[str, Any]:
    if value in CHOICES:
        return str(value)
    fn = value.get("function") if isinstance(value, dict) else None
    if not isinstance(fn, dict) or value.get("type") != "function":
        raise InvalidRequest(f"tool_choice: one of {', '.join(CHOICES)} or "
                             "{type: function, function: {name}} is required")
    return {"type": "function", "function": {"name": _tool_name(fn.get("name"),
                                                                 "tool_choice.function")}}


def _response_format(value: Any) -> dict[str, Any]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in FORMATS:
        raise InvalidRequest(f"response_format.type: one of {', '.join(FORMATS)} is required")
    if kind == "json_schema" and not isinstance(value.get("json_schema"), dict):
        raise InvalidRequest("response_format.json_schema: a map {name, schema} is required")
    size = len(compact(value).encode())
    if size > MAX_FORMAT_BYTES:
        raise InvalidRequest(f"response_format: {size} bytes of JSON "
                             f"(limit {MAX_FORMAT_BYTES})")
    return dict(value)


def _stop(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return _text(value, "stop", MAX_STOP_BYTES)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STOP:
        raise InvalidRequest(f"stop: a string or a list of 1 to {MAX_STOP} strings is required")
    return [_text(s, f"stop[{i}]", MAX_STOP_BYTES) for i, s in enumerate(value)]


def _number(lo: float, hi: float, name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not lo <= value <= hi:
            raise InvalidRequest(f"{name}: a number from {lo:g} to {hi:g} is required, "
                                 f"got {value!r}")
        return value

    return check


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidRequest(f"{name}: a whole number from {lo} to {hi} is required, "
                             f"got {value!r}")
    return value


_CHECKS: Final[dict[str, Callable[[Any], Any]]] = {
    "tools": _tools,
    "tool_choice": _tool_choice,
    "response_format": _response_format,
    "temperature": _number(0, 2, "temperature"),
    "top_p": _number(0, 1, "top_p"),
    "stop": _stop,
    "seed": lambda v: _int(v, "seed", -(2**63), 2**63 - 1),
}


def _tool_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not TOOL_NAME.fullmatch(value):
        raise InvalidRequest(f"{where}.name: 1 to 64 letters, digits, '_' or '-' are "
                             f"required, got {value!r}")
    return value


def _text(value: Any, where: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise InvalidRequest(f"{where}: {'text' if empty else 'non-empty text'} is required")
    if len(value.encode()) > limit:
        raise InvalidRequest(f"{where}: longer than {limit} bytes")
    return value
