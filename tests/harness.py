"""Test harness: the real naosd as a subprocess on a short socket path, the
real naosctl as a subprocess, and process-tree bookkeeping so no test leaves
a process behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naosd.runtime.procs import descendants, sigterm_with_parent
from naosd.runtime.procs import process_alive as alive

START_TIMEOUT = 30.0


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``predicate`` until it is truthy (its value) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


def socket_inodes(pids: list[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
    return inodes


def decode_address(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def sockets_of(pids: list[int], table: str, listening_only: bool) -> list[tuple[str, int]]:
    """(host, port) of the sockets in /proc/net/<table> owned by ``pids``."""
    inodes = socket_inodes(pids)
    found = []
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        parts = line.split()
        is_listen = parts[3] == "0A"  # TCP_LISTEN (also "unconnected" for UDP)
        if int(parts[9]) in inodes and (is_listen or not listening_only):
            found.append(decode_address(parts[1]))
    return found


def kill_all(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NAOS_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra)
    return env


@dataclass
class Naosd:
    """One running daemon under test."""

    socket: Path
    state_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]
    seen_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def remember_tree(self) -> list[int]:
        pids = descendants(self.pid)
        self.seen_pids.update(pids)
        return pids

    def ctl(self, *args: str, input: str | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        return naosctl("--socket", str(self.socket), *args, input=input,
                       timeout=timeout, env=self.env, check=check)

    def agent(self, name: str) -> dict[str, Any]:
        """``naosctl status NAME --json``: exit 0 when it runs, 3 when it does not."""
        out = self.ctl("status", name, "--json")
        assert out.returncode in (0, 3), f"status {name}: {out.stderr}\n{self.log()[-3000:]}"
        assert (out.returncode == 0) == (json.loads(out.stdout)["state"] == "running")
        view: dict[str, Any] = json.loads(out.stdout)
        return view

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.remember_tree()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_all([self.pid, *descendants(self.pid)])
            self.proc.wait(timeout=10)
            raise


def naosctl(*args: str, input: str | None = None, timeout: float = 60,
            env: dict[str, str] | None = None, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "naosctl", *args], input=input,
                          capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), check=check)


@contextlib.contextmanager
def short_tempdir() -> Iterator[Path]:
    """AF_UNIX paths are limited to ~100 bytes: keep sockets under /tmp."""
    path = Path(tempfile.mkdtemp(prefix="naos-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_naosd(base: Path, *extra: str, env: dict[str, str] | None = None,
                wait: bool = True, state_dir: Path | None = None) -> Naosd:
    """Start naosd with its state in ``base`` and wait until it answers."""
    sock = base / "s"
    state = state_dir or base / "state"
    log_path = base / f"naosd-{time.monotonic_ns()}.log"
    env = env or clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                           XDG_CONFIG_HOME=str(base / "xdg-config"))
    if "XDG_CONFIG_HOME" not in env:  # the audit key goes beside the config: not in $HOME
        env = {"NAOS_AUDIT_KEY_FILE": str(base / "audit.key"), **env}
    cmd = [sys.executable, "-m", "naosd", "--socket", str(sock), "--state-dir", str(state),
           "--dashboard-port", "0", *extra]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, preexec_fn=sigterm_with_parent)
    daemon = Naosd(sock, state, proc, log_path, env)
    if wait:
        wait_ready(daemon)
    return daemon


def wait_ready(daemon: Naosd, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"naosd exited {daemon.proc.returncode}:\n{daemon.log()}")
        if daemon.socket.exists() and "ready" in daemon.log():
            daemon.remember_tree()
            return
        time.sleep(0.05)
    daemon.stop(signal.SIGKILL)
    raise AssertionError(f"naosd not ready in {timeout}s:\n{daemon.log()}")


def reap(daemon: Naosd) -> list[int]:
    """Make sure the daemon and everything it started is gone.  Returns the
    pids that had to be killed by force (a test failure)."""
    if daemon.proc.poll() is None:
        daemon.remember_tree()
        kill_all([daemon.pid])
        daemon.proc.wait(timeout=10)
    survivors = wait_gone(sorted(daemon.seen_pids), timeout=10)
    kill_all(survivors)
    return survivors
