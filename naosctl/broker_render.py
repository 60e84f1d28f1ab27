"""Text rendering for broker, skill and cost results (pure: dict in, str out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def usd(micro: int | None) -> str:
    """``1_500_000`` -> ``"$1.50"``; sub-cent amounts keep their digits (``"$0.000123"``)."""
    if micro is None:
        return "-"
    sign, micro = ("-", -micro) if micro < 0 else ("", micro)
    dollars, frac = divmod(micro, 1_000_000)
    return f"{sign}${dollars:,}.{f'{frac:06d}'.rstrip('0').ljust(2, '0')}"


def skills(result: dict[str, Any]) -> str:
    rows = [("NAME", "KIND", "SOURCE", "PRICE", "PATTERNS")]
    for s in result["skills"]:
        pats = [f"kw:{k}" for k in s["keywords"]] + [f"re:{r}" for r in s["regexes"]]
        pats += [f"ex:{e}" for e in s["examples"]]
        text = "; ".join(pats)
        rows.append((s["name"], s["kind"], s["source"], usd(s["price_micro"]),
                     text if len(text) <= 70 else text[:69] + "…"))
    th = result["thresholds"]
    tail = (f"thresholds: skill {th['skill']:.2f}, wasm {th['wasm']:.2f}; "
            f"llm fallback: {'configured' if result['llm'] else 'not configured'}")
    tools = [(t["name"], t["kind"], t["source"], usd(t["price_micro"]),
              f"called by name ({t['state']})") for t in result.get("tools", [])]
    return _table(rows + tools) + "\n" + tail


def route(result: dict[str, Any], explain: bool) -> str:
    if not explain:
        chosen = result["chosen"]
        return f"{chosen['name']} ({chosen['kind']})" if chosen else result["reason"]
    lines = [result["explain"]]
    if result.get("ties"):
        lines.append(f"tied on price with the winner: {', '.join(result['ties'])}")
    return "\n".join(lines)


def execute(result: dict[str, Any]) -> str:
    return str(result["output"]).rstrip("\n")


def execute_summary(result: dict[str, Any]) -> str:
    return (f"[{result['route']}:{result['handler']} cost {usd(result['cost_micro'])}, "
            f"reserved {usd(result['reserved_micro'])}]")


def stats(result: dict[str, Any]) -> str:
    rows = [("KIND", "TASKS", "FAILED", "COST", "ALL-LLM EST.")]
    for kind, k in sorted(result["by_kind"].items()):
        rows.append((kind, str(k["tasks"]), str(k["failed"]), usd(k["cost_micro"]),
                     usd(k["llm_estimate_micro"])))
    pct = (100 * result["saved_micro"] / result["all_llm_micro"]) if result["all_llm_micro"] else 0
    return (_table(rows) + f"\n{result['tasks']} tasks since {result['since']}: spent "
            f"{usd(result['cost_micro'])}; all to the LLM would be about "
            f"{usd(result['all_llm_micro'])}; saved {usd(result['saved_micro'])} ({pct:.1f}%)")


def budgets(result: dict[str, Any]) -> str:
    """The budgets as a table, then one line per paused or throttled budget: since
    when and why (an agent refused tasks by a pause budget shows it here)."""
    rows = [("SCOPE", "LIMIT", "SPENT", "RESERVED", "USED", "ACTION", "STATE", "RESETS")]
    notes = []
    for b in result["budgets"]:
        scope = "global" if b["scope"] == "*" else b["scope"]
        state = b.get("state") or ("paused" if b["paused"] else "throttled" if b["throttled"]
                                   else "ok")
        used = "-" if b["percent"] is None else f"{b['percent']:.1f}%"
        rows.append((scope, f"{usd(b['limit_micro'])}/{b['period']}", usd(b["spent_micro"]),
                     usd(b["reserved_micro"]), used, b["action"], state, b["period_end"]))
        if b.get("since"):
            notes.append(f"{scope}: {state} since {b['since']}: {b.get('reason') or '-'}")
    if not result["budgets"]:
        return "no budgets set (naosctl cost set --help)"
    return "\n".join([_table(rows), *notes])


def history(result: dict[str, Any]) -> str:
    rows = [("DAY", "AGENT", "KIND", "TASKS", "COST")]
    rows += [(d["day"], d["agent"] or "-", d["route_kind"], str(d["tasks"]), usd(d["cost_micro"]))
             for d in result["days"]]
    return _table(rows) + f"\ntotal {usd(result['total_micro'])} since {result['since']}"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
