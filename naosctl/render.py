"""Pure rendering: results from naosd -> text for people, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

AUDIT_COLUMNS = ("seq", "ts", "actor", "agent", "type", "detail", "prev_hash", "hash")


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return " ".join(parts)


def tree(node: dict[str, Any], prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
    """Draw an actor tree with box characters."""
    facts = [str(node.get("state", "?"))]
    if node.get("pid"):
        facts.append(f"pid {node['pid']}")
    if node.get("restarts"):
        facts.append(f"restarts {node['restarts']}")
    if node.get("error"):
        facts.append(f"error: {node['error']}")
    label = f"{node.get('name', '?')} ({node.get('kind', 'actor')}): {', '.join(facts)}"
    lines = [label if root else f"{prefix}{'└── ' if last else '├── '}{label}"]
    children = node.get("children") or []
    child_prefix = "" if root else prefix + ("    " if last else "│   ")
    for i, child in enumerate(children):
        lines += tree(child, child_prefix, i == len(children) - 1, root=False)
    return lines


def status(s: dict[str, Any]) -> str:
    dash = s.get("dashboard") or {}
    lines = [
        f"naosd {s['version']} running (pid {s['pid']}, {s['mode']} mode)",
        f"  uptime:      {duration(s['uptime_s'])} (since {s['started_at']})",
        f"  socket:      {s['socket']}",
        f"  database:    {s['db']}",
        f"  config:      {s.get('config_file') or 'defaults (no file)'}",
        f"  dashboard:   {dash.get('url') or 'disabled'}",
        f"  connections: {s['connections']}, requests served: {s['requests_served']}",
        f"  audit head:  #{s['audit_head']}",
        "actors:",
    ]
    lines += ["  " + line for line in tree(s["actors"])]
    return "\n".join(lines)


def audit_row(row: dict[str, Any]) -> str:
    who = row["actor"] + (f"/{row['agent']}" if row.get("agent") else "")
    detail = json.dumps(row.get("detail") or {}, sort_keys=True, ensure_ascii=False)
    return f"#{row['seq']:<6} {row['ts']} {row['type']:<22} {who:<16} {detail}"


def verify(result: dict[str, Any]) -> str:
    if result["ok"]:
        return (f"audit chain OK: {result['checked']} rows verified, head "
                f"#{result['head_seq']} {str(result['head_hash'])[:16]}")
    return (f"audit chain BROKEN at #{result['first_bad_seq']}: {result['reason']} "
            f"({result['checked']} rows checked)")


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)


def csv_rows(rows: list[dict[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(AUDIT_COLUMNS)
    for r in rows:
        values = [r.get(c) for c in AUDIT_COLUMNS]
        values[5] = json.dumps(r.get("detail") or {}, sort_keys=True, ensure_ascii=False)
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()
