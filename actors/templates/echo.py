"""The echo agent: replies with what it was given."""

from __future__ import annotations

from typing import Any


def handle(message: Any, ctx: Any) -> Any:
    ctx.log("echo", message)
    return message
