"""The dashboard's view of saga and workflow runs: the runs list (with its
filters and the actions this build offers), one run's step timeline, and
the route that runs an action on a run.

Everything but the two views and :func:`action_call` is pure and tested
directly (tests/test_dashboard_features.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from naosd.control.api import invoke
from naosd.control.params import parse_since
from naosd.errors import InvalidRequest, NotFound

FINAL_RUN_STATES = frozenset({"completed", "compensated", "compensation_failed", "failed",
                              "resolved", "cancelled"})

# timeline suffix -> (phase, what it does to that step's open segment)
_OPENS = {"step_started": "forward", "compensation_started": "compensate",
          "approval_requested": "approval"}
_CLOSES = {
    "step_succeeded": ("forward", "completed"), "step_failed": ("forward", "failed"),
    "step_retrying": ("forward", "failed"), "step_skipped": ("forward", "skipped"),
    "compensated_step": ("compensate", "compensated"),
    "compensation_failed_step": ("compensate", "failed"),
    "compensation_retrying": ("compensate", "failed"),
    "approved": ("approval", "approved"), "rejected": ("approval", "rejected"),
}
# run rows that end every step still open (the machine stops them without a step row)
_ENDS_ALL = {"cancel_requested": "cancelled", "cancelled": "cancelled", "timed_out": "failed"}


def run_segments(timeline: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's timeline rows as bars: one segment per attempt of a step or of
    its compensation, with start, end and outcome.  A segment still open when
    the same step starts again was interrupted (a daemon restart left it in
    doubt); one still open at the end is running (``ended_at`` None)."""
    segments: list[dict[str, Any]] = []
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    for row in timeline:
        kind = row["type"].split(".", 1)[-1]
        step, ts, detail = row.get("step"), row["ts"], row.get("detail") or {}
        if kind in _ENDS_ALL:
            for seg in open_.values():
                seg.update(status=_ENDS_ALL[kind], ended_at=ts)
            open_.clear()
        if step is None:
            continue
        if kind in _OPENS:
            key = (step, _OPENS[kind])
            if key in open_:
                open_.pop(key).update(status="interrupted", ended_at=ts)
            waits = "awaiting_approval" if key[1] == "approval" else "running"
            seg = {"name": step, "phase": key[1], "status": waits, "started_at": ts,
                   "ended_at": None, "attempt": detail.get("attempt", 1), "error": ""}
            open_[key] = seg
            segments.append(seg)
        elif kind in _CLOSES:
            phase, status = _CLOSES[kind]
            closed = open_.pop((step, phase), None)
            if closed is None:  # e.g. a skip without a start: a zero-length mark
                closed = {"name": step, "phase": phase, "started_at": ts,
                          "attempt": detail.get("attempt", 1)}
                segments.append(closed)
            closed.update(status=status, ended_at=ts, error=detail.get("error", ""))
            if phase == "approval":
                closed.update(by=detail.get("by"), note=detail.get("note", ""))
        elif kind == "compensation_skipped":
            segments.append({"name": step, "phase": "compensate", "status": "skipped",
                             "started_at": ts, "ended_at": ts, "attempt": 0, "error": ""})
    return segments  # the page draws a running segment up to its own clock


def run_summary(view: dict[str, Any]) -> dict[str, Any]:
    steps = view.get("steps") or []
    done = sum(1 for s in steps if s.get("status") in ("succeeded", "skipped", "compensated"))
    final = view["status"] in FINAL_RUN_STATES
    return {"kind": view["kind"], "id": view["run_id"], "name": view["name"],
            "status": view["status"], "started_at": view.get("created_at"),
            "ended_at": view.get("updated_at") if final else None,
            "steps_done": done, "steps_total": len(steps), "error": view.get("error", ""),
            "resolution": view.get("resolution", ""), "awaiting": view.get("awaiting")}


def run_detail(history: dict[str, Any]) -> dict[str, Any]:
    segments = run_segments(history.get("timeline") or [])
    outputs = {s["name"]: s.get("output") for s in history.get("steps") or []}
    for seg in segments:
        if seg["phase"] == "forward" and seg["status"] == "completed":
            seg["output"] = outputs.get(seg["name"])
    return {**run_summary(history), "input": history.get("input"), "steps": segments}


RUN_KINDS = ("saga", "workflow")


@dataclass(frozen=True)
class RunFilter:
    """What ``GET /api/v1/runs`` was asked for: ``kind``, ``status`` and
    ``name`` narrow the control methods' own queries, ``since`` (15m, 2h,
    1d or an ISO-8601 time) keeps the runs created from then on."""

    kinds: tuple[str, ...] = RUN_KINDS
    status: str | None = None
    name: str | None = None
    since: str | None = None
    limit: int = 50


def run_filter(query: Mapping[str, str], now: datetime) -> RunFilter:
    """The filters of a runs request; :class:`InvalidRequest` names a bad one."""
    kind = query.get("kind") or None
    if kind is not None and kind not in RUN_KINDS:
        raise InvalidRequest(f"kind: {kind!r} is neither saga nor workflow")
    raw_limit = query.get("limit") or "50"
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidRequest(f"limit: {raw_limit[:32]!r} is not an integer") from None
    text = {k: (query.get(k) or "").strip() for k in ("status", "name", "since")}
    for key, longest in (("status", 32), ("name", 64), ("since", 64)):
        if len(text[key]) > longest:
            raise InvalidRequest(f"{key}: longer than {longest} characters")
    return RunFilter(kinds=(kind,) if kind else RUN_KINDS, status=text["status"] or None,
                     name=text["name"] or None,
                     since=parse_since(text["since"], now) if text["since"] else None,
                     limit=min(max(limit, 1), 1000))


def select_runs(found: Iterable[dict[str, Any]], f: RunFilter) -> list[dict[str, Any]]:
    """Newest first, at most ``f.limit``, none created before ``f.since``
    (timestamps are UTC ISO strings of one format, so they sort as text)."""
    kept = [v for v in found if f.since is None or (v.get("created_at") or "") >= f.since]
    kept.sort(key=lambda v: v.get("created_at") or "", reverse=True)
    return kept[:f.limit]


# verb -> the control methods that may do it, first registered wins ("{kind}" is saga or
# workflow).  A verb none of whose methods is registered is not offered, and its POST is 404.
RUN_ACTIONS: dict[str, tuple[str, ...]] = {
    "retry_compensation": ("{kind}.retry_compensation",),
    "resolve": ("{kind}.resolve",),
    "cancel": ("{kind}.cancel",),
    "approve": ("{kind}.approve", "approve"),
    "reject": ("{kind}.reject", "reject"),
}


def run_action_method(kind: str, verb: str, methods: Mapping[str, Any]) -> str | None:
    for pattern in RUN_ACTIONS.get(verb, ()):
        name = pattern.format(kind=kind)
        if name in methods:
            return name
    return None


def run_actions(methods: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per run kind, the actions this build offers: the method behind each
    and its parameters (so the page knows whether to send a note or a step)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in RUN_KINDS:
        out[kind] = {}
        for verb in RUN_ACTIONS:
            name = run_action_method(kind, verb, methods)
            if name is not None:
                params = {k: s.describe() for k, s in methods[name].params.items()}
                out[kind][verb] = {"method": name, "params": params}
    return out


# -- views ---------------------------------------------------------------------------


def kinds_with_status(f: RunFilter, methods: Mapping[str, Any]) -> tuple[str, ...]:
    """The kinds of ``f`` whose runs can be in ``f.status`` (each ``<kind>.runs``
    names its statuses); InvalidRequest if none can."""
    if f.status is None:
        return f.kinds
    kinds = tuple(k for k in f.kinds if f.status in methods[f"{k}.runs"].params["status"].choices)
    if not kinds:
        raise InvalidRequest(f"status: no {' or '.join(f.kinds)} run is ever {f.status[:32]!r}")
    return kinds


async def runs_view(d: Any, request: web.Request) -> dict[str, Any]:
    f = run_filter(request.query, datetime.now(UTC))
    found = []
    for kind in kinds_with_status(f, d.methods):
        found += await invoke(d, f"{kind}.runs", {"limit": f.limit, "name": f.name,
                                                  "status": f.status, "since": f.since})
    names = sorted({spec["name"] for kind in RUN_KINDS if f"{kind}.list" in d.methods
                    for spec in await invoke(d, f"{kind}.list", {})})
    return {"runs": [run_summary(v) for v in select_runs(found, f)], "names": names,
            "actions": run_actions(d.methods)}


def action_call(path: Mapping[str, str], methods: Mapping[str, Any]
                ) -> tuple[str, dict[str, Any]]:
    """``POST /api/v1/runs/{kind}/{run}/{verb}`` -> the method behind the verb
    and the parameters the path gives it (the JSON body gives the rest)."""
    kind, verb = path["kind"], path["verb"]
    name = run_action_method(kind, verb, methods) if kind in RUN_KINDS else None
    if name is None:
        raise NotFound(f"this naosd cannot {verb[:40]} a {kind[:40]} run")
    return name, {"run": path["run"]}


async def run_view(d: Any, request: web.Request) -> dict[str, Any]:
    kind = request.match_info["kind"]
    if kind not in RUN_KINDS:
        raise web.HTTPNotFound(text=f"no run kind {kind!r}\n")
    return run_detail(await invoke(d, f"{kind}.history", {"run": request.match_info["run"]}))
