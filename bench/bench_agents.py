"""Agent benchmarks: figures and ratios against a floor measured in the same run.

    python bench/bench_agents.py [--n 1000] [--kills 100] [--agents 100]

1. Raw Thespian: external ``ActorSystem.ask`` round trip to an echo actor
   (multiprocTCPBase, in a subprocess so no naos patch applies): the floor.
2. ``agent.run`` round trip through the client library to an ``echo``
   template agent (plus the pieces it is made of: event-loop ``ping``, one
   root-actor hop ``actors.ping``, and a handler that writes no log line).
3. Crash -> the restarted child answers ``agent.run`` again: SIGKILL the
   agent's pid ourselves, then poll ``agent.run`` in a tight loop (no sleep)
   until a reply comes from a new pid.  For an agent of the implicit
   supervisor (``agents``: paced to stay under its restart intensity) and for
   one of a one_for_one user supervisor (max_restarts 1000, window 60 s).
   Breakdown from the audit rows the supervisor writes (wall-clock
   timestamps, no polling): kill -> ``agent.crashed`` -> ``agent.restarted``
   -> ``agent.started``; and a second series polling ``agent.inspect``.
4. Time to start N agents: ``agent.create start=true`` one after another,
   and N defined under a user supervisor then ``supervisor.start``.
5. PSS per active agent (``/proc/PID/smaps_rollup``), for the whole daemon
   tree too, and how many active agents would fit in 24 GiB.

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import (  # noqa: E402
    Daemon,
    interleaved,
    is_descendant,
    line,
    ms_line,
    pct,
    raw_thespian,
    section,
    timed,
)

from naosctl.client import Client  # noqa: E402
from naosd.errors import NaosError  # noqa: E402

POLL_TIMEOUT = [5.0]  # the timeout param of each polling agent.run (--poll-timeout)
GIVE_UP_S = 30.0  # a restart slower than this is reported as a failure
QUIET_HANDLER = "def handle(message, ctx):\n    return message\n"


# -- small helpers --------------------------------------------------------------


def wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


# -- 1. the floor ------------------------------------------------------------------


# -- the daemon ----------------------------------------------------------------------


def round_trips(c: Client, base: Path, n: int, floor: float) -> None:
    quiet = base / "quiet.py"
    quiet.write_text(QUIET_HANDLER)
    c.call("agent.create", name="e", template="echo", start=True, timeout=60)
    c.call("agent.create", name="quiet", source=str(quiet), start=True, timeout=60)
    counter = iter(range(1 << 62))

    def run(name: str) -> Callable[[], object]:
        return lambda: c.call("agent.run", name=name, input={"i": next(counter)})

    head0 = c.call("status").get("audit_head", 0)
    timed(run("e"), 0, warmup=100)
    rows = (c.call("status").get("audit_head", 0) - head0) / 100
    results = interleaved({
        "agent.run echo template (client library)": run("e"),
        "agent.run handler without ctx.log": run("quiet"),
        "client ping (event loop only)": lambda: c.call("ping"),
        "client actors.ping (one root-actor hop)": lambda: c.call("actors.ping"),
    }, n)
    for name, samples in results.items():
        print(line(name, samples, floor))
    print("  (agent.run = resolve via the root actor + RunAgent ask to the agent, each on a"
          " fresh\n   private Thespian endpoint, + SQLite writes in the daemon: the log lines"
          f" of the run,\n   and {rows:.2f} audit rows per agent.run; calls interleaved)")


# -- 3. crash -> restarted child answering ------------------------------------


class Pacer:
    """Keeps the kills of one supervisor under its restart intensity."""

    def __init__(self, max_restarts: int, window_s: float, margin: int = 2) -> None:
        self.budget = max(1, max_restarts - margin)
        self.window_s = window_s + 1.0
        self.kills: list[float] = []
        self.waited = 0.0

    def room(self) -> bool:
        now = time.monotonic()
        return sum(1 for t in self.kills if t > now - self.window_s) < self.budget

    def wait(self) -> None:
        while not self.room():
            oldest = min(t for t in self.kills if t > time.monotonic() - self.window_s)
            pause = max(0.01, oldest + self.window_s - time.monotonic())
            time.sleep(pause)
            self.waited += pause

    def note(self) -> None:
        self.kills.append(time.monotonic())


class KillSeries:
    """Kill one agent again and again; record how long until it answers."""

    def __init__(self, c: Client, daemon: Daemon, name: str, pacer: Pacer | None = None
                 ) -> None:
        self.c, self.daemon, self.name, self.pacer = c, daemon, name, pacer
        self.samples: list[dict[str, Any]] = []
        self.failures: list[str] = []

    def current_pid(self) -> int:
        view = self.c.call("agent.inspect", name=self.name, logs=0)
        if view["state"] != "running" or not view["pid"]:
            raise RuntimeError(f"{self.name} is {view['state']} (pid {view['pid']})")
        pid = int(view["pid"])
        if not is_descendant(pid, self.daemon.proc.pid):
            raise RuntimeError(f"pid {pid} of {self.name} is not under naosd")
        return pid

    def run(self, count: int, *, inspect_first: bool = False) -> None:
        for _ in range(count):
            if self.pacer is not None and not self.pacer.room():
                return
            try:
                self.samples.append(self.one(inspect_first))
            except (NaosError, RuntimeError, OSError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                if len(self.failures) >= 3:
                    return

    def one(self, inspect_first: bool) -> dict[str, Any]:
        old = self.current_pid()
        self.c.call("agent.run", name=self.name, input={"warm": True})  # answering now
        if self.pacer is not None:
            self.pacer.note()
        w0 = time.time()
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        seen = self.poll_inspect(old, t0) if inspect_first else None
        errors: Counter[str] = Counter()
        failed_calls: list[float] = []
        trace: list[tuple[float, float, str]] = []  # (start, duration, outcome) in ms
        while True:
            tc = time.perf_counter()
            try:
                reply = self.c.call("agent.run", name=self.name, input={"k": 1},
                                    timeout=POLL_TIMEOUT[0])
            except NaosError as exc:
                errors[exc.code] += 1
                failed_calls.append((time.perf_counter() - tc) * 1e3)
                outcome = f"{exc.code}: {exc.message[:60]}"
            else:
                outcome = f"ok from pid {reply['pid']}"
                if reply["pid"] != old:
                    trace.append(((tc - t0) * 1e3, (time.perf_counter() - tc) * 1e3, outcome))
                    break
                errors["answered from the old pid"] += 1
            trace.append(((tc - t0) * 1e3, (time.perf_counter() - tc) * 1e3, outcome))
            if time.perf_counter() - t0 > GIVE_UP_S:
                raise RuntimeError(f"{self.name} did not answer from a new pid in {GIVE_UP_S}s")
        t1 = time.perf_counter()
        return {"wall0": w0, "ms": (t1 - t0) * 1e3, "last_call_ms": (t1 - tc) * 1e3,
                "failed_calls": failed_calls, "errors": errors, "seen_ms": seen, "trace": trace,
                "old": old, "new": reply["pid"]}

    def poll_inspect(self, old: int, t0: float) -> float:
        while True:
            view = self.c.call("agent.inspect", name=self.name, logs=0)
            if view["state"] == "running" and view["pid"] not in (None, old):
                return (time.perf_counter() - t0) * 1e3
            if time.perf_counter() - t0 > GIVE_UP_S:
                raise RuntimeError(f"agent.inspect never showed a new pid for {self.name}")

    def add_audit(self) -> None:
        """Attach the audit-row timestamps (ms after the kill) to each sample."""
        rows = list(self.c.stream("audit.tail", n=20 * len(self.samples) + 100,
                                  agent=self.name))
        stamped = [(wall(r["ts"]), r["type"]) for r in rows]
        for i, s in enumerate(self.samples):
            end = self.samples[i + 1]["wall0"] if i + 1 < len(self.samples) else float("inf")
            marks: dict[str, float] = {}
            for ts, kind in stamped:
                if s["wall0"] <= ts < end and kind not in marks:
                    marks[kind] = (ts - s["wall0"]) * 1e3
            s["audit"] = marks


def report_kills(title: str, series: KillSeries) -> None:
    samples = series.samples
    print(f"-- {title}")
    for f in series.failures:
        print(f"   FAILURE: {f}")
    if not samples:
        return
    series.add_audit()
    total = [s["ms"] for s in samples]
    print(ms_line("  kill -> run answered from the new pid", total))
    print(f"  {'goal p50 <= 10 ms':<46} p50 is {pct(total, 0.5) / 10:.1f}x the goal")
    stages = [("agent.crashed", "exit detected, crashed row"),
              ("agent.restarted", "restart decided, restarted row"),
              ("agent.started", "new process reported its pid")]
    for kind, what in stages:
        got = [s["audit"][kind] for s in samples if kind in s["audit"]]
        print(ms_line(f"  kill -> {kind} ({what})", got))
    both = [s for s in samples if "agent.started" in s["audit"]]
    print(ms_line("  agent.started row -> run answered", [s["ms"] - s["audit"]["agent.started"]
                                                          for s in both]))
    seen = [s["seen_ms"] for s in samples if s["seen_ms"] is not None]
    if seen:
        print(ms_line("  kill -> agent.inspect shows the new pid", seen))
    activated = sum(1 for s in samples if "agent.start_requested" in s["audit"])
    errors: Counter[str] = Counter()
    for s in samples:
        errors.update(s["errors"])
    failed = [x for s in samples for x in s["failed_calls"]]
    polls = sum(len(s["failed_calls"]) for s in samples) / len(samples)
    print(f"  polling: agent.run (timeout {POLL_TIMEOUT[0]:g} s) in a tight loop, no sleep;"
          f" {polls:.1f} failed polls per kill ({dict(errors) or 'none'})")
    if failed:
        print(f"  a failed poll returned in p50 {pct(failed, 0.5):.1f} ms: the client-side"
              " polling granularity")
    print(f"  the answering call took p50 {pct([s['last_call_ms'] for s in samples], 0.5):.1f}"
          " ms (an agent.run that finds the agent unregistered activates it and waits,\n"
          f"  polling resolve every {daemon_poll_ms()} ms in naosd); {activated}/{len(samples)}"
          " kills also got an agent.start_requested audit row from such a call")
    hung = [s for s in samples if any(x >= 0.9e3 * POLL_TIMEOUT[0] for x in s["failed_calls"])]
    if hung:
        rest = [s["ms"] for s in samples if s not in hung]
        print(f"  {len(hung)} kill(s) had a poll that hung for its whole {POLL_TIMEOUT[0]:g} s"
              " timeout (sent to the dying process, no reply ever came);"
              + (f" without them p50 {pct(rest, 0.5):.1f} ms, p99 {pct(rest, 0.99):.1f} ms"
                 if rest else ""))
    worst = max(samples, key=lambda s: s["ms"])
    marks = ", ".join(f"{k} +{v:.1f}" for k, v in sorted(worst["audit"].items(),
                                                          key=lambda kv: kv[1]))
    print(f"  slowest kill ({worst['ms']:.1f} ms): audit rows at {marks or 'none'} ms")
    for start, took, outcome in worst["trace"]:
        print(f"    agent.run at +{start:7.1f} ms took {took:7.1f} ms -> {outcome}")


def audit_probe(base: Path, n: int = 200) -> list[float]:
    """ms per audit append with naos's own Store, next to the daemon's state."""
    from naosd.storage.store import Store

    out = []
    tag = time.monotonic_ns()
    with Store.open(base / f"probe-{tag}.db", checkpoint_path=base / f"probe-{tag}.head"
                    ) as store:
        for i in range(n):
            t0 = time.perf_counter()
            store.append_audit("bench.probe", detail={"i": i})
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def daemon_poll_ms() -> str:
    from naosd.agents import service as agents

    poll = getattr(agents, "POLL_S", None)
    return f"{poll * 1e3:g}" if isinstance(poll, int | float) else "?"


def kill_phase(c: Client, daemon: Daemon, args: argparse.Namespace) -> None:
    from actors.domain.definitions import implicit_supervisor

    implicit = implicit_supervisor()
    pacer = Pacer(implicit.max_restarts, implicit.window_s)
    c.call("agent.create", name="victim", template="echo", start=True, timeout=60)
    c.call("supervisor.create", name="crashy", strategy="one_for_one", max_restarts=1000,
           window=60)
    c.call("agent.create", name="crashy-victim", template="echo", start=False,
           supervisor="crashy")
    c.call("supervisor.start", name="crashy", timeout=60)
    in_implicit = KillSeries(c, daemon, "victim", pacer)
    in_user = KillSeries(c, daemon, "crashy-victim")
    inspected = KillSeries(c, daemon, "crashy-victim")
    print("(a restart writes the crashed + restarted audit rows before the new process is"
          " forked,\n and the started row before the root learns the new address)")
    appends = audit_probe(daemon.base)
    print(f"audit append probe before the kills: p50 {pct(appends, 0.5):.2f} ms, p99"
          f" {pct(appends, 0.99):.2f} ms (Store.append_audit, synchronous=full + checkpoint)")
    t0 = time.perf_counter()
    in_implicit.run(args.implicit_kills)
    in_user.run(args.kills)  # fills part of the implicit supervisor's window
    inspected.run(args.inspect_kills, inspect_first=True)
    while len(in_implicit.samples) < args.implicit_kills and len(in_implicit.failures) < 3:
        pacer.wait()
        in_implicit.run(args.implicit_kills - len(in_implicit.samples))
    appends = audit_probe(daemon.base)
    print(f"audit append probe after the kills:  p50 {pct(appends, 0.5):.2f} ms, p99"
          f" {pct(appends, 0.99):.2f} ms")
    print(f"(implicit supervisor {implicit.name!r}: {implicit.max_restarts} restarts per"
          f" {implicit.window_s:g} s, so its kills are paced to <= {pacer.budget} per"
          f" {pacer.window_s:g} s; waited {pacer.waited:.0f} s; phase took"
          f" {time.perf_counter() - t0:.0f} s)")
    report_kills(f"agent 'victim' in the implicit supervisor, {args.implicit_kills} kills",
                 in_implicit)
    report_kills(f"agent 'crashy-victim' in one_for_one 'crashy' (1000/60 s), {args.kills} "
                 "kills", in_user)
    report_kills(f"same agent, {args.inspect_kills} kills, polling agent.inspect(logs=0) "
                 "until it shows a new pid, then agent.run", inspected)


# -- 4. starting many agents ---------------------------------------------------------


def start_phase(c: Client, count: int) -> None:
    each = []
    t0 = time.perf_counter()
    for i in range(count):
        tc = time.perf_counter()
        c.call("agent.create", name=f"fleet-{i:03d}", template="echo", start=True, timeout=60)
        each.append((time.perf_counter() - tc) * 1e3)
    total = time.perf_counter() - t0
    print(f"{count} x agent.create start=true, one after another: {total:6.2f} s total,"
          f" {total / count * 1e3:6.1f} ms per agent (p50 {pct(each, 0.5):.1f} ms,"
          f" p99 {pct(each, 0.99):.1f} ms, max {max(each):.1f} ms)")

    c.call("supervisor.create", name="bulk", strategy="one_for_one")
    t0 = time.perf_counter()
    for i in range(count):
        c.call("agent.create", name=f"bulk-{i:03d}", template="echo", start=False,
               supervisor="bulk")
    defined = time.perf_counter() - t0
    t0 = time.perf_counter()
    c.call("supervisor.start", name="bulk", timeout=300)
    returned = time.perf_counter() - t0
    polls = 0
    while True:
        polls += 1
        tree = c.call("supervisor.status", name="bulk")
        up = sum(1 for ch in tree.get("children") or []
                 if ch.get("state") == "running" and ch.get("pid"))
        if up >= count or time.perf_counter() - t0 > 300:
            break
        time.sleep(0.001)
    total = time.perf_counter() - t0
    print(f"{count} x agent.create start=false under supervisor 'bulk': {defined:6.2f} s"
          f" ({defined / count * 1e3:.1f} ms per definition)")
    print(f"supervisor.start bulk -> all {up}/{count} running: {total:6.2f} s total,"
          f" {total / count * 1e3:6.1f} ms per agent (supervisor.start returned after"
          f" {returned * 1e3:.0f} ms; polled supervisor.status {polls}x with 1 ms sleeps)")


# -- 5. memory ---------------------------------------------------------------------------


def rollup(pid: int) -> dict[str, float]:
    """Pss/Rss/USS of one process in MiB (from smaps_rollup)."""
    kb: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
        for row in fh:
            parts = row.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                kb[parts[0].rstrip(":")] = int(parts[1])
    uss = kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)
    return {"pss": kb["Pss"] / 1024, "rss": kb["Rss"] / 1024, "uss": uss / 1024}


def memory_phase(c: Client, daemon: Daemon) -> None:
    agents = [a for a in c.call("agent.list") if a["state"] == "running" and a["pid"]]
    for a in agents:  # active: each has served a message
        c.call("agent.run", name=a["name"], input={"warm": True})
    agents = [a for a in c.call("agent.list") if a["state"] == "running" and a["pid"]]
    tree = [daemon.proc.pid, *daemon.remember()]
    mem = {}
    for pid in tree:
        with contextlib.suppress(OSError, KeyError):
            mem[pid] = rollup(pid)
    agent_pids = [int(a["pid"]) for a in agents if int(a["pid"]) in mem]
    if not agent_pids:
        print("no agent process could be read")
        return
    infra = [p for p in mem if p not in set(agent_pids)]

    def col(key: str, pids: list[int]) -> list[float]:
        return [mem[p][key] for p in pids]

    pss, rss, uss = col("pss", agent_pids), col("rss", agent_pids), col("uss", agent_pids)
    tree_pss = sum(col("pss", list(mem)))
    infra_pss = sum(col("pss", infra))
    n = len(agent_pids)
    print(f"{n} active agent processes (each answered one agent.run), daemon tree of"
          f" {len(mem)} processes")
    for label, vals in (("PSS", pss), ("RSS", rss), ("USS (private)", uss)):
        print(f"  per agent {label:<14} mean {statistics.mean(vals):6.2f} MiB"
              f"  median {statistics.median(vals):6.2f} MiB  max {max(vals):6.2f} MiB")
    print(f"  whole tree PSS {tree_pss:8.1f} MiB (RSS sum {sum(col('rss', list(mem))):8.1f}"
          f" MiB); non-agent processes ({len(infra)}: naosd, admin, logger, root,"
          f" supervisors...) PSS {infra_pss:.1f} MiB")
    budget = 24 * 1024
    med = statistics.median(pss)
    print(f"  fit in 24 GiB: {budget / med:8.0f} agents at the median PSS"
          f" ({med:.2f} MiB); {budget / statistics.mean(uss):.0f} at the mean USS;"
          f" {(budget - infra_pss) / ((tree_pss - infra_pss) / n):.0f} from the tree"
          f" total less the fixed part; {budget / statistics.median(rss):.0f} if each cost"
          " its RSS")


# -- main -----------------------------------------------------------------------------


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    section(name)
    t0 = time.perf_counter()
    try:
        yield
    except Exception:  # noqa: BLE001 - report and go on to the next phase
        print(f"PHASE FAILED: {name}")
        traceback.print_exc(file=sys.stdout)
    print(f"({name}: {time.perf_counter() - t0:.1f} s)", flush=True)


def daemon_log_summary(daemon: Daemon) -> None:
    noisy = [row for row in daemon.log().splitlines()
             if " ERROR " in row or " WARNING " in row or "Traceback" in row]
    print(f"naosd log: {len(noisy)} warning/error lines")
    for row in noisy[:8]:
        print(f"  {row[:200]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="round trips per figure")
    ap.add_argument("--kills", type=int, default=100, help="kills in the user supervisor")
    ap.add_argument("--implicit-kills", type=int, default=None,
                    help="kills in the implicit supervisor (default: --kills)")
    ap.add_argument("--inspect-kills", type=int, default=20,
                    help="kills polled through agent.inspect")
    ap.add_argument("--agents", type=int, default=100, help="agents started in phase 4")
    ap.add_argument("--poll-timeout", type=float, default=POLL_TIMEOUT[0],
                    help="timeout of each polling agent.run after a kill (s)")
    args = ap.parse_args()
    POLL_TIMEOUT[0] = args.poll_timeout
    if args.implicit_kills is None:
        args.implicit_kills = args.kills
    base = Path(tempfile.mkdtemp(prefix="naos-bench-", dir="/tmp"))
    daemon: Daemon | None = None
    started = time.perf_counter()
    try:
        print(f"naos agent benchmarks (n={args.n}, kills={args.kills}/{args.implicit_kills},"
              f" agents={args.agents}, {os.cpu_count()} cores, load average"
              f" {os.getloadavg()[0]:.2f})")
        floor = raw_thespian(args.n)
        fp50 = pct(floor, 0.5)
        section("1. floor")
        print(line("raw Thespian ask round trip (floor)", floor))
        daemon = Daemon(base)
        with Client(daemon.sock) as c:
            with phase("2. message round trip through an agent"):
                round_trips(c, base, args.n, fp50)
            with phase("3. SIGKILL -> restarted agent answers agent.run"):
                kill_phase(c, daemon, args)
            with phase(f"4. starting {args.agents} agents"):
                start_phase(c, args.agents)
            with phase("5. memory per active agent"):
                memory_phase(c, daemon)
    finally:
        if daemon is not None:
            section("shutdown")
            took, rc, left = daemon.stop()
            print(f"SIGTERM -> naosd exited {rc} in {took:.2f} s;"
                  f" {len(left)} leftover processes killed")
            daemon_log_summary(daemon)
        shutil.rmtree(base, ignore_errors=True)
        print(f"\ntotal {time.perf_counter() - started:.0f} s, load average now"
              f" {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
