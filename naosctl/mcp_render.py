"""Text rendering for the MCP client's results (pure: dict in, str out)."""

from __future__ import annotations

from typing import Any

from naosctl.broker_render import _table, usd
from naosctl.render import printable


def servers(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no tool servers (naosctl mcp add NAME --command ... | --url ...)"
    table = [("NAME", "STATE", "PID", "TOOLS", "CRASHES", "PRICE", "WHERE")]
    notes = []
    for s in rows:
        where = " ".join(s["command"]) if s["transport"] == "stdio" else s["url"]
        table.append((s["name"], _state(s), str(s["pid"] or "-"), str(s["tools"]),
                      str(s["crashes"]), usd(s["price_micro"]), _cut(where, 60)))
        if s["state"] != "up" and s.get("last_exit"):
            notes.append(f"{s['name']}: {s['last_exit']}")
        notes += [f"{s['name']}: skipped {p}" for p in s.get("skipped", [])]
    return printable("\n".join([_table(table), *notes]), lines=True)


def _state(s: dict[str, Any]) -> str:
    if s["state"] == "down" and s.get("retry_in_s"):
        return f"down (retry in {s['retry_in_s']:g}s)"
    return str(s["state"])


def tools(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no tools listed"
    table = [("TOOL", "PRICE", "LLM FUNCTION", "DESCRIPTION")]
    table += [(t["tool"], usd(t["price_micro"]), t["function"] or "-",
               _cut(" ".join(t["description"].split()), 60)) for t in rows]
    return printable(_table(table), lines=True)


def call(result: dict[str, Any]) -> str:
    tail = f"({result['tool']}: {usd(result['cost_micro'])}, task {result['task_id']})"
    return printable(f"{result['text']}\n{tail}", lines=True)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
