"""The /proc process table: who is alive, whose child, in which session, since
when (Linux; elsewhere every lookup is empty). A leaf module: stdlib only."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    state: str
    session: int
    start: int  # clock ticks after boot (field 22 of /proc/<pid>/stat)


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return Proc(pid, int(fields[1]), fields[0], int(fields[3]), int(fields[19]))


def proc_table() -> list[Proc]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    procs = (read_proc(int(e)) for e in entries if e.isdigit())
    return [p for p in procs if p is not None]


def alive(pid: int) -> bool:
    proc = read_proc(pid)
    return proc is not None and proc.state not in ("Z", "X")


def children_of(pid: int) -> set[int]:
    return {p.pid for p in proc_table() if p.ppid == pid}


def closure(table: list[Proc], seeds: set[int]) -> set[int]:
    """``seeds`` and all their descendants in ``table``."""
    found, frontier = set(seeds), set(seeds)
    while frontier:
        frontier = {p.pid for p in table if p.ppid in frontier} - found
        found |= frontier
    return found


def reap(pids: set[int]) -> None:
    """Collect the exit status of those of ``pids`` that are our dead children."""
    me = os.getpid()
    for pid in pids:
        proc = read_proc(pid)
        if proc is not None and proc.ppid == me and proc.state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(seeds: set[int]) -> None:
    """SIGKILL ``seeds`` and their descendants and reap what is ours."""
    pids = closure(proc_table(), seeds)
    signal_all(pids, signal.SIGKILL)
    time.sleep(0.05)
    reap(pids)


def cmdline(pid: int) -> str:
    """The NUL-separated command line of ``pid`` ("" if gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsdecode(f.read())
    except OSError:
        return ""


def boot_id() -> str:
    """This boot's random id ("" without /proc): start times are per boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""
