"""Pure rendering for ``naosctl axis`` and ``naosctl llm`` (kept apart from
render.py so the trust/LLM commands own their output)."""

from __future__ import annotations

from typing import Any


def usd(micro: int | None) -> str:
    """Micro-dollars as dollars; None is "no cap"."""
    if micro is None:
        return "no cap"
    dollars, frac = divmod(int(micro), 1_000_000)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"${dollars:,}.{digits}"


def record(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return ["  scores: none (nothing local, cached or from AXIS)"]
    return [f"  AUID:    {r['auid']}",
            f"  T-Score: {r['t_score']} -> {r['tier']} ({r['tier_label']})",
            f"  C-Score: {r['c_score']} -> {r['rating']} (per-task cap {usd(r['cap_micro'])})",
            f"  source:  {r['source']} (verified {r['verified_at']})"]


def axis_status(s: dict[str, Any]) -> str:
    reg = s["registration"]
    lines = [f"{reg['agent']}: AUID {reg['auid']}"
             + (" (local only)" if reg["local_only"] else "")]
    lines += record(s["record"])
    if s.get("axis_error"):
        lines.append(f"  AXIS:    {s['axis_error']}")
    p = s["policy"]
    lines.append(f"  policy:  min tier {p['min_tier']}, min T-Score {p['min_t_score']}, "
                 f"min rating {p['min_rating']}")
    verdict = "allowed" if s["preview"]["allow"] else "DENIED"
    lines.append(f"  a task now would be {verdict}: {s['preview']['reason']}")
    return "\n".join(lines)


def axis_verify(v: dict[str, Any]) -> str:
    lines = [f"AUID {v['auid']}" + (f" (agents: {', '.join(v['agents'])})" if v["agents"]
                                     else "")]
    lines += record(v["record"])
    if v.get("axis_error"):
        lines.append(f"  AXIS:    {v['axis_error']}")
    return "\n".join(lines)


def axis_cache(c: dict[str, Any]) -> str:
    if c.get("cleared") is not None:
        return f"cleared {c['cleared']} cached AXIS answer(s)"
    if not c["entries"]:
        return "the AXIS cache is empty"
    rows = [f"{e['auid']:<32} {e['t_score']:>5} {e['c_score']:>5}  "
            f"{e['age_s']:>7.0f}s  {'yes' if e['fresh'] else 'no'}" for e in c["entries"]]
    return "\n".join([f"{'AUID':<32} {'T':>5} {'C':>5}  {'AGE':>8}  FRESH", *rows])


def axis_policy(p: dict[str, Any]) -> str:
    eff = p["effective"]
    scope = f"agent {p['agent']}" if p["agent"] else "global"
    lines = [f"trust policy ({scope}{', with override' if p.get('override') else ''}):",
             f"  min tier:     {eff['min_tier']}",
             f"  min T-Score:  {eff['min_t_score']}",
             f"  min rating:   {eff['min_rating']}",
             "  caps per task: " + ", ".join(f"{r} {usd(c)}" for r, c in eff["caps"].items()),
             f"  AXIS down and nothing fresh cached: "
             f"{'allow (fail-open)' if p['fail_open'] else 'deny (fail-closed)'}"]
    return "\n".join(lines)


def llm_result(r: dict[str, Any]) -> str:
    mark = " (estimated)" if r["estimated"] else ""
    return (f"{r['text']}\n--\n{r['model']}: {r['input_tokens']} in / {r['output_tokens']} out "
            f"tokens{mark}, cost {usd(r['cost_micro'])}, {r['attempts']} attempt(s)")


def llm_status(s: dict[str, Any]) -> str:
    if s["kind"] == "none":
        return f"no LLM: {s['reason']}"
    if s["kind"] == "remote":
        return (f"remote LLM {s['base_url']} model {s['model'] or '(server default)'}; "
                f"key {'set' if s['api_key_set'] else 'not set'}; timeout {s['timeout_s']}s, "
                f"{s['max_retries']} retries; price {s['price_input_per_1k_micro']}/"
                f"{s['price_output_per_1k_micro']} micro-$ per 1K in/out tokens")
    crashes = f"; {s['crashes']} crash(es) within {s['window_s']:g} s" if s["crashes"] else ""
    return (f"local LLM {s['model']}: {_local_state(s)}; started {s['starts']} time(s)"
            f"{crashes}; log {s['log']}")


def _local_state(s: dict[str, Any]) -> str:
    match s["state"]:
        case "ready":
            return f"ready (pid {s['pid']}, {s['base_url']})"
        case "starting":
            return f"starting (pid {s['pid']}, {s['in_state_s']:g} s so far)"
        case "backoff":
            return (f"exited ({s['last_exit']}); starts again on the next call, not before "
                    f"{s['retry_in_s']:g} s")
        case "crashed":
            return (f"crashed ({s['last_exit']}); not restarted until `naosctl llm restart`")
        case _:
            return "not running; starts on first use"
