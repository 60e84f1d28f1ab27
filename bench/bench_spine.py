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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], object], n: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def line(name: str, samples: list[float], floor: float | None = None) -> str:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    ratio = f"  {p50 / floor:5.2f}x floor" if floor else ""
    return f"{name:<44} p50 {p50:8.1f} us  p99 {p99:8.1f} us{ratio}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_thespian(n: int) -> list[float]:
    code = f"""
import time, json
from thespian.actors import ActorSystem, Actor
class Echo(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, str):
            self.send(sender, msg)
asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {free_port()}}},
                   logDefs={{"version": 1, "disable_existing_loggers": False}},
                   transientUnique=True)
try:
    echo = asys.createActor(Echo)
    for _ in range(100):
        asys.ask(echo, "x", 5)
    out = []
    for _ in range({n}):
        t0 = time.perf_counter()
        assert asys.ask(echo, "x", 5) == "x"
        out.append((time.perf_counter() - t0) * 1e6)
    print(json.dumps(out))
finally:
    asys.shutdown()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=True)
    import json

    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def start_daemon(base: Path) -> subprocess.Popen[bytes]:
    sock = base / "s"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAOS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "naosd", "--socket", str(sock), "--state-dir",
         str(base / "state"), "--dashboard-port", "0", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("naosd did not start")
        time.sleep(0.05)
    return proc


def through_daemon(base: Path, n: int) -> dict[str, list[float]]:
    from naosctl.client import Client

    proc = start_daemon(base)
    try:
        with Client(base / "s") as c:
            results = {
                "client ping (event loop)": timed(lambda: c.call("ping"), n),
                "client actors.ping (root actor hop)": timed(lambda: c.call("actors.ping"), n),
            }
        results["naosctl ping (whole process)"] = timed(
            lambda: subprocess.run([sys.executable, "-m", "naosctl", "--socket",
                                    str(base / "s"), "ping"], check=True,
                                   stdout=subprocess.DEVNULL), 20, warmup=2)
        return results
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def audit_rates(base: Path, n: int) -> tuple[float, float, float]:
    import apsw

    from naosd.storage import Store

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
