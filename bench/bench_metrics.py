"""What /metrics costs: the fold's rate, and the hot path with the audit follower on.

    python bench/bench_metrics.py [--n 400] [--rows 100000]

1. The fold and its application to prometheus-client metrics, in process
   (no store): rows/s over a mix of the row types naosd writes, against the
   audit log's own append rate on this machine (docs/architecture.md).
2. ``agent.run`` on an echo agent through the client library, interleaved
   between two daemons: one with the dashboard (the follower wakes on each
   audit append and reads the new rows on the store thread) and one with
   ``dashboard.enabled = false`` (no follower): the ratio is the follower's
   cost on the hot path.
3. A scrape of ``/metrics`` (the catch-up, the snapshot, the exposition)
   with 50 agents that each ran.

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import Daemon, interleaved, line, ms_line, pct, section

from naosctl.client import Client
from naosd.dashboard.metrics_feed import MetricsFeed
from naosd.errors import NaosError
from naosd.storage.audit import AuditRow

T = "2026-01-02T03:04:05.123456Z"
MIX = [
    ("agent.run", "echo", {"ok": True, "ms": 0.1, "error": None, "idempotency_key": None}),
    ("agent.run", "crashy", {"ok": False, "ms": 0.0, "error": "agent_crashed"}),
    ("trust.allow", None, {"allow": True, "code": "no_agent", "cost_micro": 1}),
    ("broker.execute", None, {"route": "skill", "handler": "sha256", "status": "ok",
                              "cost_micro": 1, "task_id": "t"}),
    ("saga.step_started", None, {"run_id": "s-1", "saga": "order", "step": "a",
                                 "attempt": 1}),
    ("saga.step_succeeded", None, {"run_id": "s-1", "saga": "order", "step": "a",
                                   "attempt": 1}),
    ("agent.started", "echo", {"name": "echo", "pid": 1, "supervisor": "agents"}),
    ("wasm.run", None, {"exit_code": 0, "fuel": 69, "wall_ms": 0.5}),
]


def fold_rate(rows: int) -> None:
    section(f"fold + apply, {rows} rows in process")
    feed = MetricsFeed(None, after=0)  # type: ignore[arg-type]  # apply() needs no store
    batch = [AuditRow(i, T, "naosd", agent, type_, detail, "", "")
             for i, (type_, agent, detail) in enumerate(MIX * (rows // len(MIX)), 1)]
    t0 = time.perf_counter()
    feed.apply(batch)
    took = time.perf_counter() - t0
    print(f"{len(batch) / took:,.0f} rows/s ({took / len(batch) * 1e6:.1f} us a row)")


def hot_path(n: int) -> None:
    section("agent.run: follower on (dashboard) vs off")
    with tempfile.TemporaryDirectory(prefix="naos-bm-", dir="/tmp") as a, \
            tempfile.TemporaryDirectory(prefix="naos-bm-", dir="/tmp") as b:
        on = Daemon(Path(a))
        off = Daemon(Path(b), {"NAOS_DASHBOARD_ENABLED": "false"})
        try:
            with Client(on.sock) as c_on, Client(off.sock) as c_off:
                for c in (c_on, c_off):
                    c.call("agent.create", name="echo", template="echo")
                    first_run(c)
                got = interleaved({
                    "on": lambda: c_on.call("agent.run", name="echo", input=1),
                    "off": lambda: c_off.call("agent.run", name="echo", input=1)}, n)
            floor = pct(got["off"], 0.5)
            print(line("agent.run, no follower (floor)", got["off"]))
            print(line("agent.run, follower on", got["on"], floor))
            scrape(on, n // 4)
        finally:
            for d in (on, off):
                d.stop()


def first_run(c: Client) -> None:
    """The first run, retried while the daemon is still starting its tree (a
    loaded machine: ``ping`` answers before the agents supervisor runs)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            c.call("agent.run", name="echo", input=1)
            return
        except NaosError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def scrape(d: Daemon, n: int) -> None:
    section("GET /metrics with 50 agents that ran")
    with Client(d.sock) as c:
        for i in range(50):
            c.call("agent.create", name=f"a{i}", template="echo")
            c.call("agent.run", name=f"a{i}", input=1)
        dash = c.call("dashboard.url")
    url, token = dash["url"], dash["login_url"].split("token=", 1)[1]
    request = urllib.request.Request(url + "metrics",
                                     headers={"Authorization": f"Bearer {token}"})
    took, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as resp:
            size = len(resp.read())
        took.append((time.perf_counter() - t0) * 1e3)
    print(ms_line(f"scrape ({size:,} bytes)", took))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    fold_rate(args.rows)
    hot_path(args.n)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
