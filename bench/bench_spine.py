"""Spine benchmarks: figures and ratios against floors measured in the same run.

    python bench/bench_spine.py [--n 2000]

1. Raw Thespian: external ``ActorSystem.ask`` round trip to an echo actor
   (multiprocTCPBase, no naos code): the floor.
2. naosd: client-library ``ping`` (answered by the event loop) and
   ``actors.ping`` (a round trip through the root supervisor actor), and a
   whole ``naosctl ping`` process, over the real Unix socket.
3. Audit appends/s (hash chain + checkpoint file, synchronous=full) against raw
   apsw single-row INSERT commits/s with the same pragmas.

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Daemon, line, pct, raw_thespian, timed

from naosctl.client import Client


def through_daemon(base: Path, n: int) -> dict[str, list[float]]:
    daemon = Daemon(base)
    try:
        with Client(daemon.sock) as c:
            results = {
                "client ping (event loop)": timed(lambda: c.call("ping"), n),
                "client actors.ping (root actor hop)": timed(lambda: c.call("actors.ping"), n),
            }
        results["naosctl ping (whole process)"] = timed(
            lambda: subprocess.run([sys.executable, "-m", "naosctl", "--socket",
                                    str(daemon.sock), "ping"], check=True,
                                   stdout=subprocess.DEVNULL), 20, warmup=2)
        return results
    finally:
        daemon.stop()


def audit_rates(base: Path, n: int) -> tuple[float, float, float]:
    import apsw

    from naosd.storage.store import Store

    raw = apsw.Connection(str(base / "raw.db"))
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=FULL")
    raw.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        with raw:
            raw.execute("INSERT INTO t(body) VALUES (?)", (f"row {i}",))
    raw_rate = n / (time.perf_counter() - t0)
    raw.close()
    rates = []
    for checkpoint in (None, base / "audit.head"):
        with Store.open(base / f"audit-{bool(checkpoint)}.db", checkpoint_path=checkpoint) as s:
            t0 = time.perf_counter()
            for i in range(n):
                s.append_audit("bench.event", detail={"i": i})
            rates.append(n / (time.perf_counter() - t0))
    return raw_rate, rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="naos-bench-", dir="/tmp"))
    try:
        print(f"naos spine benchmarks (n={args.n}, {os.cpu_count()} cores)")
        floor = raw_thespian(args.n)
        fp50 = pct(floor, 0.5)
        print(line("raw Thespian ask round trip (floor)", floor))
        for name, samples in through_daemon(base, args.n).items():
            print(line(name, samples, fp50))
        raw_rate, plain, with_cp = audit_rates(base, min(args.n, 3000))
        print(f"{'raw apsw INSERT commits/s (WAL, full)':<44} {raw_rate:10.0f}/s")
        print(f"{'audit appends/s (chain, no checkpoint)':<44} {plain:10.0f}/s"
              f"  {plain / raw_rate:5.2f}x raw")
        print(f"{'audit appends/s (chain + head checkpoint)':<44} {with_cp:10.0f}/s"
              f"  {with_cp / raw_rate:5.2f}x raw")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
