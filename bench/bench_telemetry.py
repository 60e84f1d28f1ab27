"""What traces cost: the hooks with tracing off, and ``agent.run`` with it on.

    python bench/bench_telemetry.py [--n 500] [--hooks 1000000]

1. The hooks in process (naosd.telemetry), per call: ``span()`` entered and
   left, ``attached({})``, ``carrier()``; against an empty ``with
   contextlib.nullcontext()`` (the floor), off and on (spans exported to a
   collector in this process that answers 200 and drops them).
2. ``agent.run`` through the real daemon: two daemons side by side, one with
   ``telemetry.enabled`` (exporting to that collector), one without; calls
   interleaved so drifting load hits both alike.  A plain handler
   (``agent.run``: a request span and an ``invoke_agent`` span) and one that
   ``ctx.ask``s the plain one (4 spans, the trace crossing the agent channel).

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import Daemon, interleaved, line, pct, section  # noqa: E402

from naosctl.client import Client  # noqa: E402
from naosd import telemetry  # noqa: E402

PLAIN = "def handle(message, ctx):\n    return message\n"
ASKS = ("async def handle(message, ctx):\n"
        "    return await ctx.ask('plain', message)\n")


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps only counts."""

    exports = 0
    bytes = 0

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(size)
        Collector.exports += 1
        Collector.bytes += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def collector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def per_call_ns(fn: Callable[[], object], n: int) -> float:
    best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9
    time.sleep(0.3)  # let the exporter drain between timings
    return best


def hooks(n: int) -> dict[str, float]:
    def floor() -> None:
        with contextlib.nullcontext():
            pass

    def span() -> None:
        with telemetry.span("agent.run", "server") as s:
            if s.recording:
                s.update({"rpc.method": "agent.run"})

    def attached() -> None:
        with telemetry.attached({}):
            pass

    return {"nullcontext (floor)": per_call_ns(floor, n), "span": per_call_ns(span, n),
            "attached({})": per_call_ns(attached, n),
            "carrier()": per_call_ns(telemetry.carrier, n)}


def hook_phase(n: int, url: str) -> float:
    section("1. the hooks in process, ns per call (best of 5)")
    off = hooks(n)
    telemetry.start(telemetry.Settings(url + "/v1/traces", "bench", {}))
    try:
        on = hooks(400)  # x5 repeats: within the batch queue (2,048), nothing dropped
    finally:
        telemetry.stop()
    for name in off:
        print(f"{name:<24} off {off[name]:8.0f} ns   on {on[name]:8.0f} ns")
    # agent.run calls: a request span + attached, an invoke_agent span, a carrier.
    per_run = off["span"] * 2 + off["attached({})"] + off["carrier()"]
    print(f"hooks one agent.run calls with tracing off: ~{per_run:.0f} ns")
    return per_run


def run_phase(base: Path, url: str, n: int, hook_ns: float) -> None:
    section(f"2. agent.run through the real daemon (n={n} each, interleaved)")
    off = Daemon(base / "off")
    on = Daemon(base / "on", {"NAOS_TELEMETRY_ENABLED": "true",
                              "NAOS_TELEMETRY_OTLP_ENDPOINT": url})
    try:
        with Client(off.sock) as c_off, Client(on.sock) as c_on:
            for c, d in ((c_off, off), (c_on, on)):
                for name, code in (("plain", PLAIN), ("asks", ASKS)):
                    path = d.base / f"{name}.py"
                    path.write_text(code)
                    c.call("agent.create", name=name, source=str(path), start=True,
                           timeout=60)
                    c.call("axis.register", agent=name, t_score=900, c_score=950)
            counter = iter(range(1 << 62))

            def run(c: Client, name: str) -> Callable[[], object]:
                return lambda: c.call("agent.run", name=name, input={"i": next(counter)})

            results = interleaved({
                "agent.run plain, tracing off": run(c_off, "plain"),
                "agent.run plain, tracing on": run(c_on, "plain"),
                "agent.run asks plain, tracing off": run(c_off, "asks"),
                "agent.run asks plain, tracing on": run(c_on, "asks"),
            }, n)
        for name, samples in results.items():
            print(line(name, samples))
        for kind in ("plain", "asks plain"):
            p_off = pct(results[f"agent.run {kind}, tracing off"], 0.5)
            p_on = pct(results[f"agent.run {kind}, tracing on"], 0.5)
            print(f"tracing on costs {kind}: {p_on - p_off:+.1f} us at p50 "
                  f"({(p_on / p_off - 1) * 100:+.1f} %)")
        p_plain = pct(results["agent.run plain, tracing off"], 0.5)
        print(f"the off hooks' share of agent.run plain: {hook_ns / 1e3:.2f} us of "
              f"{p_plain:.0f} us ({hook_ns / 1e3 / p_plain * 100:.3f} %)")
    finally:
        for d in (off, on):
            d.stop()
    time.sleep(0.5)
    print(f"collector received {Collector.exports} exports, {Collector.bytes} bytes")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="agent.run calls per figure")
    ap.add_argument("--hooks", type=int, default=1_000_000, help="hook calls per timing")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="naos-bench-", dir="/tmp"))
    print(f"naos telemetry benchmark ({os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f})")
    try:
        with collector() as url:
            hook_ns = hook_phase(args.hooks, url)
            for sub in ("off", "on"):
                (base / sub).mkdir()
            run_phase(base, url, args.n, hook_ns)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
