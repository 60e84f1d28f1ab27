"""Saga and pool benchmarks: figures and ratios against floors measured in the same run.

    python bench/bench_saga.py [--sagas 100] [--steps 5] [--tasks 2000]

Run it from a checkout: the naosd it starts is that checkout's, so the same
script measures a "before" tree (``PYTHONPATH=<other checkout> python
<other checkout>/bench/bench_saga.py``) and an "after" one.

1. Floor for durability: raw apsw commits/s (WAL, synchronous=FULL, one
   small UPDATE per transaction) on the same file system as naosd's state.
2. Durable saga steps: a saga of --steps steps against a handler that
   returns at once; runs one after another (latency-bound: the step latency)
   and all started at once (throughput-bound).  Each step is one transition
   commit (the previous step's "finished" and this one's "started" go in one
   transaction) plus one ``agent.run`` (whose own audit row is a second
   commit); ``agent.run`` round trips/s alone are measured as a second floor.
3. Floor for pools: raw Thespian actor round trips/s (multiprocTCPBase, in a
   subprocess so no naos patch applies): a dispatcher actor keeping 4 worker
   actors busy, two messages in flight each.
4. Pool throughput: tasks/s through a queue-mode pool of 4 member agents
   (pool.submit, then drain; each task is durable: submitted, started and
   finished are three commits), and pool.run fan-outs/s (each = 4 agent asks
   plus the fan-out's record, two commits).

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import Daemon, free_port, pct, section  # noqa: E402

from naosctl.client import Client  # noqa: E402
from naosd.errors import RequestTimeout  # noqa: E402

QUIET_HANDLER = "def handle(message, ctx):\n    return {'ok': True}\n"


def apsw_commits(path: Path, n: int) -> float:
    import apsw

    db = apsw.Connection(str(path))
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO t(id, v) VALUES (1, '')")
        t0 = time.perf_counter()
        for i in range(n):
            with db:  # BEGIN ... COMMIT
                db.execute("UPDATE t SET v = ? WHERE id = 1", (f"value {i}" * 20,))
        return n / (time.perf_counter() - t0)
    finally:
        db.close()


def actor_fanout(n: int, workers: int = 4) -> float:
    """Messages/s a dispatcher actor gets through ``workers`` worker actors."""
    code = f"""
import time, json
from thespian.actors import ActorSystem, Actor
class Worker(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, dict):
            self.send(sender, msg)
class Dispatcher(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, dict) and "go" in msg:
            self.client, self.left, self.sent = sender, msg["go"], 0
            self.workers = [self.createActor(Worker) for _ in range({workers})]
            self.t0 = time.perf_counter()
            for w in self.workers:  # keep each worker busy with 2 in flight
                for _ in range(2):
                    self._send(w)
        elif isinstance(msg, dict) and "i" in msg:
            self.left -= 1
            if self.sent < self.total:
                self._send(sender)
            if self.left == 0:
                self.send(self.client, {{"s": time.perf_counter() - self.t0}})
    def _send(self, w):
        self.send(w, {{"i": self.sent}})
        self.sent += 1
    total = {n}
asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {free_port()}}},
                   logDefs={{"version": 1, "disable_existing_loggers": False}},
                   transientUnique=True)
try:
    warm = asys.createActor(Dispatcher)
    asys.ask(warm, {{"go": {n}}}, 300)
    d = asys.createActor(Dispatcher)
    r = asys.ask(d, {{"go": {n}}}, 300)
    print(json.dumps({n} / r["s"]))
finally:
    asys.shutdown()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def wait_final(c: Client, kind: str, run_id: str) -> dict:
    while True:
        r: dict = c.call(f"{kind}.wait", run=run_id, timeout=30)
        if r["status"] in ("completed", "compensated", "compensation_failed", "failed"):
            return r


def agent_runs(c: Client, n: int) -> float:
    """``agent.run`` round trips/s from a client: what one step's agent call costs."""
    for _ in range(20):
        c.call("agent.run", name="quick", input={})
    t0 = time.perf_counter()
    for _ in range(n):
        c.call("agent.run", name="quick", input={})
    return n / (time.perf_counter() - t0)


def sagas(c: Client, count: int, steps: int) -> tuple[list[float], float, float]:
    """Per-step latencies of runs one at a time (ms), steps/s serial and parallel."""
    c.call("saga.create", name="bench")
    for i in range(steps):
        c.call("saga.add_step", saga="bench", step=f"s{i}", agent="quick", compensate="quick")
    wait_final(c, "saga", c.call("saga.run", name="bench", input={})["run_id"])  # warm
    latencies = []
    t0 = time.perf_counter()
    for i in range(count):
        t1 = time.perf_counter()
        r = wait_final(c, "saga", c.call("saga.run", name="bench", input={"i": i})["run_id"])
        latencies.append((time.perf_counter() - t1) * 1000 / steps)
        assert r["status"] == "completed", r
    serial = count * steps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    ids = [c.call("saga.run", name="bench", input={"i": i})["run_id"] for i in range(count)]
    for run_id in ids:
        assert wait_final(c, "saga", run_id)["status"] == "completed"
    parallel = count * steps / (time.perf_counter() - t0)
    return latencies, serial, parallel


def pools(c: Client, base: Path, tasks: int) -> tuple[float, float, float]:
    handler = base / "quiet.py"
    for i in range(4):
        c.call("agent.create", name=f"m{i}", source=str(handler), start=True)
    c.call("pool.create", name="four", agents=[f"m{i}" for i in range(4)], merge="all")
    c.call("pool.submit", name="four", input=0)
    t0 = time.perf_counter()
    for i in range(tasks):
        c.call("pool.submit", name="four", input=i)
    submitted = time.perf_counter() - t0
    while True:
        try:
            status = c.call("pool.drain", name="four", timeout=50)
            break
        except RequestTimeout:
            continue
    queued = tasks / (time.perf_counter() - t0)
    assert status["failed"] == 0, status
    assert status["completed"] == tasks + 1, status
    runs = max(tasks // 10, 20)
    c.call("pool.create", name="fan", agents=[f"m{i}" for i in range(4)], merge="all")
    t0 = time.perf_counter()
    for i in range(runs):
        assert c.call("pool.run", name="fan", input=i)["status"] == "completed"
    fanouts = runs / (time.perf_counter() - t0)
    return queued, fanouts, tasks / submitted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sagas", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--commits", type=int, default=2000)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="naos-bench-", dir="/tmp"))
    daemon: Daemon | None = None
    print(f"naos saga/pool benchmarks ({os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f})")
    try:
        section("1. floor: raw apsw WAL commits, synchronous=FULL")
        commits = apsw_commits(base / "raw.sqlite", args.commits)
        print(f"{'raw apsw commits/s':<48} {commits:10.0f}")
        section("3. floor: raw Thespian actor round trips (dispatcher <-> 4 workers)")
        floor = actor_fanout(args.tasks)
        print(f"{'actor round trips/s (4 workers, 2 in flight each)':<48} {floor:10.0f}")
        daemon = Daemon(base)
        with Client(daemon.sock, timeout=120) as c:
            section(f"2. durable saga steps ({args.sagas} runs x {args.steps} steps)")
            handler = base / "quiet.py"
            handler.write_text(QUIET_HANDLER)
            c.call("agent.create", name="quick", source=str(handler), start=True)
            runs = agent_runs(c, 500)
            print(f"{'agent.run round trips/s (one step, no saga)':<48} {runs:10.0f}")
            latencies, serial, parallel = sagas(c, args.sagas, args.steps)
            print(f"{'durable step latency, one run at a time':<48} p50 "
                  f"{pct(latencies, 0.5):6.2f} ms  p99 {pct(latencies, 0.99):6.2f} ms"
                  f"  ({1000 / pct(latencies, 0.5) / commits:6.3f}x commits/s at p50)")
            for name, rate in (("saga steps/s, one run at a time", serial),
                               (f"saga steps/s, {args.sagas} runs at once", parallel)):
                print(f"{name:<48} {rate:10.0f}  {rate / commits:6.3f}x commits/s"
                      f"  {rate / runs:5.2f}x agent.run/s")
            section(f"4. pool of 4 members ({args.tasks} queued tasks)")
            queued, fanouts, submits = pools(c, base, args.tasks)
            print(f"{'queue-mode tasks/s (submit -> drained)':<48} {queued:10.0f}"
                  f"  {queued / floor:6.3f}x actor floor  {queued / runs:5.2f}x agent.run/s"
                  "  (durable: 3 commits a task)")
            print(f"{'  pool.submit calls/s':<48} {submits:10.0f}")
            print(f"{'pool.run fan-outs/s (4 asks each)':<48} {fanouts:10.0f}"
                  f"  {4 * fanouts / floor:6.3f}x actor floor (member asks)")
    finally:
        if daemon is not None:
            took, rc, left = daemon.stop()
            print(f"\nSIGTERM -> naosd exited {rc} in {took:.2f} s; {len(left)} leftovers killed")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
