"""The dashboard's views of the features (sagas and workflows, pools, cost,
trust, broker): one JSON document per view, shaped for the page and built
from the same control API methods and tables naosctl reads.

Each view is served only when the methods it needs are registered, so a
build without a feature answers 404 there and the page hides that view.
The shaping (``run_segments`` and friends) is pure and tested directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from naosd.errors import NaosError

View = Callable[[Any, web.Request], Awaitable[Any]]

FINAL_RUN_STATES = frozenset({"completed", "compensated", "compensation_failed", "failed",
                              "resolved"})

# timeline suffix -> (phase, what it does to that step's open segment)
_OPENS = {"step_started": "forward", "compensation_started": "compensate"}
_CLOSES = {
    "step_succeeded": ("forward", "completed"), "step_failed": ("forward", "failed"),
    "step_retrying": ("forward", "failed"), "step_skipped": ("forward", "skipped"),
    "compensated_step": ("compensate", "compensated"),
    "compensation_failed_step": ("compensate", "failed"),
    "compensation_retrying": ("compensate", "failed"),
}


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
        if step is None:
            continue
        if kind in _OPENS:
            key = (step, _OPENS[kind])
            if key in open_:
                open_.pop(key).update(status="interrupted", ended_at=ts)
            seg = {"name": step, "phase": key[1], "status": "running", "started_at": ts,
                   "ended_at": None, "attempt": detail.get("attempt", 1), "error": ""}
            open_[key] = seg
            segments.append(seg)
        elif kind in _CLOSES:
            phase, status = _CLOSES[kind]
            seg = open_.pop((step, phase), None)
            if seg is None:  # e.g. a skip without a start: a zero-length mark
                seg = {"name": step, "phase": phase, "started_at": ts,
                       "attempt": detail.get("attempt", 1)}
                segments.append(seg)
            seg.update(status=status, ended_at=ts, error=detail.get("error", ""))
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
            "steps_done": done, "steps_total": len(steps), "error": view.get("error", "")}


def run_detail(history: dict[str, Any]) -> dict[str, Any]:
    segments = run_segments(history.get("timeline") or [])
    outputs = {s["name"]: s.get("output") for s in history.get("steps") or []}
    for seg in segments:
        if seg["phase"] == "forward" and seg["status"] == "completed":
            seg["output"] = outputs.get(seg["name"])
    return {**run_summary(history), "input": history.get("input"),
            "resolution": history.get("resolution", ""), "steps": segments}


def pool_view(status: dict[str, Any]) -> dict[str, Any]:
    return {"name": status["name"], "merge": status.get("merge"), "pick": status.get("pick"),
            "members": [{"agent": m["name"], "busy": m.get("busy", 0)}
                        for m in status.get("members", [])],
            "queue_depth": status.get("queued", 0), "running": status.get("running", 0),
            "done": status.get("completed", 0), "failed": status.get("failed", 0),
            "accepting": status.get("accepting", True),
            "throughput_per_s": status.get("throughput_per_s")}


# -- views ---------------------------------------------------------------------------


async def _call(d: Any, name: str, **params: Any) -> Any:
    from naosd.api import METHODS
    from naosd.params import check

    entry = METHODS[name]
    return await entry.handler(d, check(name, entry.params, params))


async def runs_view(d: Any, request: web.Request) -> dict[str, Any]:
    limit = min(max(int(request.query.get("limit", "50") or 50), 1), 1000)
    found = [*await _call(d, "saga.runs", limit=limit),
             *await _call(d, "workflow.runs", limit=limit)]
    found.sort(key=lambda v: v.get("created_at") or "", reverse=True)
    return {"runs": [run_summary(v) for v in found[:limit]]}


async def run_view(d: Any, request: web.Request) -> dict[str, Any]:
    kind = request.match_info["kind"]
    if kind not in ("saga", "workflow"):
        raise web.HTTPNotFound(text=f"no run kind {kind!r}\n")
    return run_detail(await _call(d, f"{kind}.history", run=request.match_info["run"]))


async def pools_view(d: Any, request: web.Request) -> dict[str, Any]:
    return {"pools": [pool_view(p) for p in await _call(d, "pool.status")]}


VIEWS: dict[str, tuple[View, tuple[str, ...]]] = {
    # path under /api/v1/ -> (view, the control methods it needs)
    "runs": (runs_view, ("saga.runs", "workflow.runs")),
    "runs/{kind}/{run}": (run_view, ("saga.history", "workflow.history")),
    "pools": (pools_view, ("pool.status",)),
}


def add_views(app: web.Application, daemon_key: web.AppKey[Any],
              error: Callable[[NaosError], web.HTTPException]) -> None:
    from naosd.api import METHODS

    for path, (view, needs) in VIEWS.items():
        if all(name in METHODS for name in needs):
            app.router.add_get("/api/v1/" + path, _handler(view, daemon_key, error))


def _handler(view: View, daemon_key: web.AppKey[Any],
             error: Callable[[NaosError], web.HTTPException]) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(await view(request.app[daemon_key], request))
        except NaosError as exc:
            raise error(exc) from None
        except ValueError:
            raise web.HTTPBadRequest(text="bad query parameter\n") from None

    return handle
