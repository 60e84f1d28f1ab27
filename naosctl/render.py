"""Pure rendering: results from naosd -> text for people, JSON or CSV.

Text that comes from agents and guests (log lines, outputs, errors) may hold
terminal control sequences: an OSC 52 clipboard write, CSI cursor moves, a
carriage return that overwrites the line before it.  Text renderers show
every control character as an escape (:func:`printable`); JSON keeps every
value exact and escapes the characters JSON itself would leave raw (C1
controls, DEL, bidirectional overrides) as ``\\uXXXX``.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

AUDIT_COLUMNS = ("seq", "ts", "actor", "agent", "type", "detail", "prev_hash", "hash")

_NAMED = {0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v", 0x0C: "\\f",
          0x0D: "\\r", 0x1B: "\\e"}
_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0))  # C0, DEL, C1
# Invisible characters that reorder or break what follows them on the line.
_FORMAT = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
           0x2028, 0x2029)


def _escapes(keep: str) -> dict[int, str]:
    table = {c: _NAMED.get(c, f"\\x{c:02x}") for c in _CONTROLS}
    table.update({c: f"\\u{c:04x}" for c in _FORMAT})
    for ch in keep:
        del table[ord(ch)]
    return table


_ONE_LINE = _escapes("")
_LINES = _escapes("\n\t")
_JSON_RAW = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), *_FORMAT)}


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\e`` for
    ESC, ``\\r``, ``\\a``, ``\\x9b`` for C1, ``\\u202e`` for a bidi override),
    so nothing in it can reach a terminal as a command.  One line by default
    (newlines and tabs escaped too); ``lines=True`` keeps them."""
    return text.translate(_LINES if lines else _ONE_LINE)


def to_json(value: Any) -> str:
    """Indented JSON; every value exact, nothing a terminal would act on."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return text.translate(_JSON_RAW)


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
    if node.get("strategy"):
        facts.append(str(node["strategy"]).replace("_", "-"))
    if node.get("error") or node.get("last_error"):
        facts.append(f"last error: {node.get('error') or node.get('last_error')}")
    label = printable(f"{node.get('name', '?')} ({node.get('kind', 'actor')}): "
                      f"{', '.join(facts)}")
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
    if s.get("cluster"):
        lines.append("cluster:")
        lines += ["  " + line for line in cluster_nodes(s["cluster"])]
    agents = s.get("agents") or []
    if agents:
        lines.append("agents:")
        lines += ["  " + agent_row(a) for a in agents]
    confinement = s.get("confinement") or {}
    lines += [printable(str(line)) for line in confinement.get("summary") or ()]
    return "\n".join(lines)


def cluster_nodes(c: dict[str, Any]) -> list[str]:
    role = "leader" if c.get("is_leader") else f"member of {c.get('leader')}"
    lines = [f"this node: {c['node']} on {c['address']} ({role})"]
    for n in c.get("nodes", []):
        caps = ",".join(n.get("capabilities") or []) or "-"
        lines.append(f"{n['name']:<16} {n['address']:<22} {n['state']:<6} caps {caps:<16} "
                     f"agents {n.get('agents', 0):<4} heartbeat {n.get('last_heartbeat') or '-'}")
    return lines


def cluster(c: dict[str, Any]) -> str:
    lines = cluster_nodes(c)
    agents = c.get("agents") or []
    if agents:
        lines.append("agents:")
        lines += [f"  {a['name']:<20} {a['state']:<10} on {a.get('node') or '-'}"
                  + (f"  requires {', '.join(a['requires'])}" if a.get("requires") else "")
                  for a in agents]
    return "\n".join(lines)


def agent_row(a: dict[str, Any]) -> str:
    pid = a.get("pid") or "-"
    up = duration(a["uptime_s"]) if a.get("uptime_s") is not None else "-"
    err = f"  last error: {a['last_error']}" if a.get("last_error") else ""
    node = f" on {a['node']}" if a.get("node") else ""
    return printable(f"{a['name']:<20} {a['state']:<10} pid {pid!s:<8} up {up:<10} "
                     f"restarts {a.get('restarts', 0):<4} {a['supervisor']}{node}{err}")


def agent_status(a: dict[str, Any]) -> str:
    return agent_row(a)


def agent_detail(a: dict[str, Any]) -> str:
    lines = [f"agent {a['name']}"]
    keys = ("state", "pid", "uptime_s", "restarts", "last_error", "supervisor", "restart",
            "desired", "source_kind", "source", "created_at")
    lines += [printable(f"  {key + ':':<14}{a.get(key)}") for key in keys]
    lines.append(f"  {'digest:':<14}{a.get('digest') or '-'}")
    lines.append(f"  {'handler pid:':<14}{a.get('handler_pid') or '-'}")
    lines += [printable(line) for line in confinement(a.get("confinement") or {})]
    lines.append(f"  {'config:':<14}{to_json(a.get('config') or {})}")
    logs = a.get("logs") or []
    if logs:
        lines.append("  recent logs:")
        lines += ["    " + log_line(x) for x in logs]
    return "\n".join(lines)


def confinement(c: dict[str, Any]) -> list[str]:
    """An agent's confinement, as ``agent.inspect`` describes it."""
    if not c:
        return []
    if c.get("note"):
        return [f"  {'confinement:':<14}{c['mode']}: {c['note']}"]
    grants = ", ".join(c.get("grants") or ()) or "none"
    lines = [f"  {'confinement:':<14}{c.get('mode')} (grants: {grants})"]
    layers = c.get("layers")
    if isinstance(layers, dict) and c.get("mode") != "none":
        on = [f"landlock ABI {layers['landlock_abi']}" if layers.get("landlock_abi") else "",
              "seccomp" if layers.get("seccomp") else "",
              "user+ipc namespaces" if layers.get("user_ns") else "",
              "network namespace" if layers.get("net_ns") else ""]
        lines.append(f"    layers:     {', '.join(x for x in on if x) or 'none'}")
    elif layers:
        lines.append(f"    layers:     {layers}")
    limits = c.get("limits") or {}
    unset = {"processes": "0 (no process)"}
    shown = {k: v or unset.get(k, "none") for k, v in limits.items()}
    lines.append("    limits:     " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    seen = c.get("observed")
    if seen and seen.get("running"):
        lines.append(f"    observed:   no_new_privs {seen.get('no_new_privs')}, seccomp "
                     f"{seen.get('seccomp')}, capabilities {seen.get('capabilities')}, "
                     f"own user namespace {seen.get('own_user_namespace')}")
    return lines


def log_line(line: dict[str, Any]) -> str:
    """One log line on one line, whatever the agent wrote into it."""
    return printable(f"{line['ts']} {line['agent']} {line['level']}: {line['text']}")


def audit_row(row: dict[str, Any]) -> str:
    who = row["actor"] + (f"/{row['agent']}" if row.get("agent") else "")
    detail = json.dumps(row.get("detail") or {}, sort_keys=True, ensure_ascii=False)
    return printable(f"#{row['seq']:<6} {row['ts']} {row['type']:<22} {who:<16} {detail}")


def verify(result: dict[str, Any]) -> str:
    anchor = result.get("anchor")
    against = f"; matches the anchor at #{anchor['seq']}" if anchor else ""
    if result["ok"]:
        return (f"audit chain OK: {result['checked']} rows verified, head "
                f"#{result['head_seq']} {str(result['head_hash'])[:16]}{against}")
    if result["first_bad_seq"] is None:
        return (f"audit chain NOT VERIFIED: {result['reason']} "
                f"({result['checked']} rows checked)")
    return (f"audit chain BROKEN at #{result['first_bad_seq']}: {result['reason']} "
            f"({result['checked']} rows checked)")


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False).translate(_JSON_RAW)
                   + "\n" for r in rows)


def csv_rows(rows: list[dict[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(AUDIT_COLUMNS)
    for r in rows:
        values = [r.get(c) for c in AUDIT_COLUMNS]
        values[5] = json.dumps(r.get("detail") or {}, sort_keys=True,
                               ensure_ascii=False).translate(_JSON_RAW)
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


def wasm_report(path: str, r: dict[str, Any]) -> str:
    def externs(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"{x['module'] + '.' if x.get('module') else ''}{x['name']}"
                         f"{x.get('signature') or ''}" for x in items) or "none"

    lines = [f"{path}: {r['verdict']} ({r['size']} bytes, sha256 {r['sha256'][:16]})",
             f"  imports: {externs(r['imports'])}", f"  exports: {externs(r['exports'])}",
             f"  _start:  {'yes' if r['has_start'] else 'no'}"]
    if r.get("denied_imports"):
        lines.append(f"  denied:  {', '.join(r['denied_imports'])}")
    lines += [f"  problem: {p}" for p in r.get("problems") or []]
    return "\n".join(printable(line) for line in lines)
