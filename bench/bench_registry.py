"""Many registered agents: register N on-demand agents, list them, and
activate a sample of them by their first message.

    python bench/bench_registry.py [--n 10000]

Registered agents cost a database row (and an audit row); only the ones
that get messages run a process, stopped again after agents.idle_timeout.
No assertions: this prints numbers.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from benchlib import Daemon, pct

from naosctl.client import Client


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--active", type=int, default=50, help="agents to activate")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="naos-reg-", dir="/tmp"))
    daemon = Daemon(base)
    try:
        with Client(daemon.sock) as c:
            t0 = time.perf_counter()
            for i in range(args.n):
                c.call("agent.create", name=f"a{i}", template="echo", start=False)
            reg = time.perf_counter() - t0
            t0 = time.perf_counter()
            listed = c.call("agent.list")
            list_ms = (time.perf_counter() - t0) * 1e3
            first, again = [], []
            step = max(1, args.n // args.active)
            for i in range(0, args.n, step)[: args.active]:
                t0 = time.perf_counter()
                c.call("agent.run", name=f"a{i}", input=i)
                first.append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                c.call("agent.run", name=f"a{i}", input=i)
                again.append((time.perf_counter() - t0) * 1e3)
            running = sum(1 for a in c.call("agent.list") if a["state"] == "running")
        print(f"registered {args.n} agents in {reg:.1f} s ({reg / args.n * 1e3:.2f} ms each, "
              "definition + audit row, synchronous=full)")
        print(f"agent.list of {len(listed)} agents: {list_ms:.0f} ms")
        print(f"first message (activation: fork + load + answer): p50 {pct(first, 0.5):.1f} ms"
              f"  p99 {pct(first, 0.99):.1f} ms")
        print(f"next message (running):                          p50 {pct(again, 0.5):.1f} ms"
              f"  p99 {pct(again, 0.99):.1f} ms")
        print(f"running processes afterwards: {running} of {args.n} registered")
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
