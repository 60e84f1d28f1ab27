"""Shared pieces of the benchmarks: percentiles, timing loops, the raw
Thespian floor, and a real naosd in a temporary directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from naosctl.client import Client  # noqa: E402
from naosd.errors import NaosError  # noqa: E402
from naosd.runtime.procs import (  # noqa: E402, F401 - re-exported
    descendants,
    is_descendant,
    sigterm_with_parent,
)
from naosd.runtime.procs import process_alive as alive  # noqa: E402


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


def interleaved(fns: dict[str, Callable[[], object]], n: int, warmup: int = 20
                ) -> dict[str, list[float]]:
    """Round-robin over ``fns`` so that drifting machine load hits them alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + n):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                out[name].append((time.perf_counter() - t0) * 1e6)
    return out


def line(name: str, samples: list[float], floor: float | None = None) -> str:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    ratio = f"  {p50 / floor:6.2f}x floor" if floor else ""
    return f"{name:<48} p50 {p50:8.1f} us  p99 {p99:8.1f} us{ratio}"


def ms_line(name: str, samples: list[float]) -> str:
    if not samples:
        return f"{name:<48} (no samples)"
    return (f"{name:<48} p50 {pct(samples, 0.5):7.1f} ms  p99 {pct(samples, 0.99):7.1f} ms"
            f"  max {max(samples):7.1f} ms  (n={len(samples)})")


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


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
        if isinstance(msg, dict):
            self.send(sender, msg)
asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {free_port()}}},
                   logDefs={{"version": 1, "disable_existing_loggers": False}},
                   transientUnique=True)
try:
    echo = asys.createActor(Echo)
    for i in range(100):
        asys.ask(echo, {{"i": i}}, 5)
    out = []
    for i in range({n}):
        t0 = time.perf_counter()
        assert asys.ask(echo, {{"i": i}}, 5) == {{"i": i}}
        out.append((time.perf_counter() - t0) * 1e6)
    print(json.dumps(out))
finally:
    asys.shutdown()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, check=True)
    return list(json.loads(done.stdout.strip().splitlines()[-1]))



def kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# -- 2. message round trip -------------------------------------------------------



class Daemon:
    def __init__(self, base: Path, env_extra: dict[str, str] | None = None) -> None:
        self.base = base
        self.sock = base / "s"
        self.log_path = base / "naosd.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("NAOS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                   XDG_CONFIG_HOME=str(base / "xdg-config"))
        env.update(env_extra or {})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "naosd", "--socket", str(self.sock), "--state-dir",
                 str(base / "state"), "--dashboard-port", "0", "--log-level", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=sigterm_with_parent)
        self.seen: set[int] = set()
        self.started_s = self._wait_ready()

    def _wait_ready(self) -> float:
        t0 = time.perf_counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"naosd exited {self.proc.returncode}:\n{self.log()}")
            if self.sock.exists():
                with contextlib.suppress(NaosError, OSError), Client(self.sock) as c:
                    c.call("ping")
                    self.remember()
                    return time.perf_counter() - t0
            time.sleep(0.02)
        raise SystemExit(f"naosd did not answer within 60 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def remember(self) -> list[int]:
        pids = descendants(self.proc.pid)
        self.seen.update(pids)
        return pids

    def ours(self, pid: int) -> bool:
        """Every naosd process (actors are forked) has our socket on its command line."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return str(self.sock).encode() in fh.read()
        except OSError:
            return False

    def stop(self) -> tuple[float, int, list[int]]:
        """SIGTERM (SIGKILL after 30 s); returns (seconds, exit code, leftovers)."""
        self.remember()
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill([self.proc.pid, *descendants(self.proc.pid)])
            rc = self.proc.wait(timeout=10)
        took = time.perf_counter() - t0
        deadline = time.monotonic() + 10
        left = [p for p in self.seen if alive(p) and self.ours(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if alive(p)]
        kill(left)
        return took, rc, left
