"""Agent confinement: what it costs, as ratios against an unconfined floor.

    python bench/bench_confine.py [--n 20] [--calls 200000] [--runs 300] [--restarts 10]

1. Start: Popen to exit of a child running an empty script. The floor is
   the same interpreter started the same way (``-I -B``, empty environment,
   descriptors closed) without naos's bootstrap; then ``launch`` with
   confinement "none" (bootstrap imported, rlimits and descriptors only) and
   "full" (user + network namespace, capabilities, Landlock, seccomp).
   Interleaved, so drifting load hits all three alike.
2. Per-call overhead inside one child: a loop of ``getppid`` (seccomp runs
   its filter on every system call), ``stat`` of a file in the work dir, and
   ``open``+``close`` of it (Landlock checks every open), timed unconfined
   and confined, and with a seccomp filter that allows everything (the fixed
   cost of filtering at all); the fastest of several rounds and children, so
   that other load on the machine inflates the figures less.
3. Through the real naosd (``--runs``, ``--restarts``): two agents with the
   same handler, one confined ("full"), one ``confinement = "none"``;
   ``agent.run`` round trips interleaved between them, and restarts (stop,
   then start until the handler is loaded and answers), with the ratio
   confined / none measured in the same run.

No assertions: this prints numbers. Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchlib import Client, Daemon, interleaved, pct, section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from naosd.runtime.confine.launch import interpreter_paths, launch  # noqa: E402
from naosd.runtime.confine.policy import Confinement, HostPaths, confinement_for  # noqa: E402
from naosd.runtime.confine.support import probe  # noqa: E402

RUNNER = "naosd.runtime.confine.run"
LOOP = r"""
import json, os, sys, time
n, work = int(sys.argv[1]), sys.argv[2]
if sys.argv[3:] == ["allow-all"]:  # the fixed cost of any filter, ours aside
    from naosd.runtime.confine import kernel, seccomp
    seccomp.install(seccomp.Filter(kernel.ARCH, ((seccomp.RET_K, 0, 0, seccomp.RET_ALLOW),)))
path = os.path.join(work, "f")
open(path, "w").close()
def per_call(fn, count):
    best = float("inf")
    for _ in range(5):  # the fastest round: the least disturbed by other load
        t0 = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, (time.perf_counter() - t0) / count * 1e9)
    return best
def open_close():
    os.close(os.open(path, os.O_RDONLY))
out = {"getppid": per_call(os.getppid, n), "stat": per_call(lambda: os.stat(path), n // 4),
       "open+close": per_call(open_close, n // 4)}
print(json.dumps(out))
"""
PAIRS = 3  # children of each kind, alternated; the best of each is kept


def start_times(conf: Confinement, noop: Path, n: int) -> dict[str, list[float]]:
    """Milliseconds from Popen to exit, per kind, interleaved."""
    floor = [sys.executable, "-I", "-B", str(noop)]
    kinds = {
        "floor: interpreter, unconfined": lambda: subprocess.Popen(
            floor, env={}, cwd=conf.cwd, close_fds=True, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "launch, confinement none": lambda: launch(replace(conf, mode="none"), RUNNER,
                                                    [str(noop)]),
        "launch, confinement full": lambda: launch(conf, RUNNER, [str(noop)]),
    }
    out: dict[str, list[float]] = {name: [] for name in kinds}
    for i in range(n + 2):
        for name, start in kinds.items():
            t0 = time.perf_counter()
            proc = start()
            if proc.wait(timeout=60) != 0:
                raise SystemExit(f"{name}: exit {proc.returncode}")
            if i >= 2:
                out[name].append((time.perf_counter() - t0) * 1e3)
    return out


KINDS = (("unconfined", "none", []), ("allow-all filter", "none", ["allow-all"]),
         ("confined", "full", []))


def loop_costs(conf: Confinement, loop: Path, calls: int) -> dict[str, dict[str, float]]:
    """Nanoseconds per call, the best of PAIRS children of each kind."""
    out: dict[str, dict[str, float]] = {name: {} for name, _, _ in KINDS}
    for _ in range(PAIRS):
        for name, mode, extra in KINDS:
            costs = _loop_child(replace(conf, mode=mode), loop, [str(calls), conf.cwd, *extra])
            for call, ns in costs.items():
                out[name][call] = min(ns, out[name].get(call, ns))
    return out


def _loop_child(conf: Confinement, loop: Path, args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryFile() as log:
        proc = launch(conf, RUNNER, [str(loop), *args], log_fd=log.fileno())
        code = proc.wait(timeout=600)
        log.seek(0)
        text = log.read().decode()
    if code != 0:
        raise SystemExit(f"{conf.mode}: exit {code}\n{text}")
    return dict(json.loads(text.splitlines()[-1]))


ECHO = "def handle(message, ctx):\n    return message\n"
MODES = ("full", "none")


def agent_round_trips(base: Path, runs: int, restarts: int) -> None:
    """agent.run and restart through a real naosd: confined against "none"."""
    (base / "echo.py").write_text(ECHO)
    (base / "d").mkdir()
    daemon = Daemon(base / "d")
    try:
        with Client(daemon.sock) as c:
            for mode in MODES:
                c.call("agent.create", name=f"echo-{mode}", template=None,
                       source=str(base / "echo.py"), config=None, supervisor=None,
                       restart="permanent", start=True, timeout=60, confinement=mode)
            section(f"agent.run round trip through naosd, us (n={runs} each, interleaved)")
            calls = {mode: (lambda m=mode: c.call("agent.run", name=f"echo-{m}",
                                                  input={"x": 1}, timeout=60))
                     for mode in MODES}
            _ratio(interleaved(calls, runs), "us")
            section(f"agent restart to first answer, ms (n={restarts} each, interleaved)")
            _ratio({m: [t / 1000 for t in ts] for m, ts in interleaved(
                {mode: (lambda m=mode: _restart(c, f"echo-{m}")) for mode in MODES},
                restarts, warmup=1).items()}, "ms")
    finally:
        _, rc, left = daemon.stop()
        print(f"naosd stopped (exit {rc}, {len(left)} leftover processes killed)")


def _restart(c: Client, name: str) -> None:
    c.call("agent.restart", name=name, timeout=60)
    c.call("agent.run", name=name, input=None, timeout=60)


def _ratio(samples: dict[str, list[float]], unit: str) -> None:
    floor = pct(samples["none"], 0.5)
    for mode, values in samples.items():
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        print(f"confinement {mode:<5} p50 {p50:9.1f} {unit}  p99 {p99:9.1f} {unit}  "
              f"{p50 / floor:5.2f}x none")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20, help="starts per kind")
    parser.add_argument("--calls", type=int, default=200_000, help="getppid calls")
    parser.add_argument("--runs", type=int, default=300, help="agent.run calls per agent")
    parser.add_argument("--restarts", type=int, default=10, help="agent restarts per agent")
    opts = parser.parse_args()
    support = probe()
    print("\n".join(support.summary()))
    if support.missing():
        raise SystemExit("full confinement is not available here: nothing to measure")
    with tempfile.TemporaryDirectory(prefix="naos-bench-") as tmp:
        base = Path(tmp)
        for sub in ("snapshot", "work"):
            (base / sub).mkdir()
        (base / "snapshot" / "noop.py").write_text("")
        (base / "snapshot" / "loop.py").write_text(LOOP)
        host = HostPaths(interpreter_paths(), str(base / "snapshot"), str(base / "work"))
        conf = confinement_for({"limits": {"memory_mb": 512}}, host)

        section(f"child start to exit, ms (n={opts.n} each, interleaved)")
        times = start_times(conf, base / "snapshot" / "noop.py", opts.n)
        floor = pct(next(iter(times.values())), 0.5)
        for name, samples in times.items():
            p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
            print(f"{name:<36} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  {p50 / floor:5.2f}x floor")

        section(f"per call, ns: best of {PAIRS} children x 5 rounds ({opts.calls} getppid, "
                "a quarter as many stat and open+close)")
        costs = loop_costs(conf, base / "snapshot" / "loop.py", opts.calls)
        for call, free in costs["unconfined"].items():
            trivial, held = costs["allow-all filter"][call], costs["confined"][call]
            print(f"{call:<12} unconfined {free:6.0f}  allow-all filter {trivial:6.0f} "
                  f"({trivial / free:4.2f}x)  confined {held:6.0f} ({held / free:4.2f}x)")

        if opts.runs or opts.restarts:
            agent_round_trips(base, max(opts.runs, 1), max(opts.restarts, 1))


if __name__ == "__main__":
    main()
