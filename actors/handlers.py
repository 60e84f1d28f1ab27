"""The agent author's API and the loader of agent handlers.

An agent is a Python module with either

* ``def handle(message, ctx) -> reply``, or
* ``class Agent`` whose ``__init__(self, ctx)`` runs once per process start
  and whose ``handle(self, message, ctx)`` answers each message.

``message`` is the JSON value sent with ``naosctl run NAME --input``; the
reply must be JSON-serialisable.  ``ctx`` is an :class:`AgentContext`:
``ctx.name``, ``ctx.config`` (the agent's config dict), ``ctx.request_id``,
``ctx.idempotency_key``, ``ctx.log(*parts, level="info")``, whose lines go
to ``naosctl logs NAME``, and ``ctx.stop()`` to exit normally after
replying.  A handler that raises is a crash: the caller gets an
``agent_crashed`` error and the supervisor restarts the agent.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from naosd.errors import InvalidRequest

LOG_LINE_LIMIT = 8192
LOG_LINES_PER_RUN = 1000

Handler = Callable[[Any, "AgentContext"], Any]


class AgentContext:
    """What a handler gets besides the message."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.name = name
        self.config = config
        self.request_id = ""
        self.idempotency_key = ""
        self.lines: list[tuple[str, str, str]] = []
        self.stop_requested = False
        self.cost_micro_usd = 0  # what this run cost (WASM fuel; integer micro-dollars)

    def stop(self) -> None:
        """Exit normally once this message is answered (a *normal* exit: a
        transient agent is then not restarted, a permanent one is)."""
        self.stop_requested = True

    def log(self, *parts: Any, level: str = "info") -> None:
        """Append a line to this agent's log."""
        if len(self.lines) >= LOG_LINES_PER_RUN:
            return
        text = " ".join(p if isinstance(p, str) else json.dumps(p, default=str) for p in parts)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.lines.append((now, level, text[:LOG_LINE_LIMIT]))

    def take_lines(self) -> list[tuple[str, str, str]]:
        lines, self.lines = self.lines, []
        return lines


def load_module(source_kind: str, source: str, name: str) -> ModuleType:
    """Import the handler module; raises InvalidRequest naming the problem."""
    if source_kind == "template":
        try:
            return importlib.import_module(f"actors.templates.{source}")
        except ModuleNotFoundError:
            raise InvalidRequest(f"unknown template {source!r}") from None
    path = Path(source)
    if not path.is_file():
        raise InvalidRequest(f"handler file {source} does not exist")
    spec = importlib.util.spec_from_file_location(f"naos_agent_{name.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise InvalidRequest(f"cannot load {source} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_handler(module: ModuleType, ctx: AgentContext) -> Handler:
    """The callable that answers messages, from a loaded module."""
    cls = getattr(module, "Agent", None)
    if isinstance(cls, type):
        instance = cls(ctx)
        method = getattr(instance, "handle", None)
        if not callable(method):
            raise InvalidRequest(f"{module.__name__}.Agent has no handle(message, ctx) method")
        return method  # type: ignore[no-any-return]
    func = getattr(module, "handle", None)
    if not callable(func):
        raise InvalidRequest(
            f"{getattr(module, '__file__', module.__name__)} defines neither "
            "handle(message, ctx) nor class Agent")
    return func  # type: ignore[no-any-return]


def call(handler: Handler, message: Any, ctx: AgentContext) -> tuple[Any, float]:
    """Run ``handler`` and check its reply is JSON; returns (reply, ms)."""
    started = time.perf_counter()
    result = handler(message, ctx)
    ms = (time.perf_counter() - started) * 1e3
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the handler's reply is not JSON-serialisable: {exc}") from None
    return result, ms
