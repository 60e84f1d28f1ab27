"""The embedded LLM server's life as pure functions (stdlib only; time is an
argument): when it may start, how long it waits after a crash, and when naosd
gives up on it.  :class:`naosd.broker.llm.local.LocalLlm` is the shell that
spawns, watches and stops the process and feeds these its events.

Phases and their edges::

    STOPPED --start--> STARTING --ready--> READY
    STARTING/READY --exit (asked for)--> STOPPED
    STARTING/READY --exit (crash)--> BACKOFF (next start not before retry_at)
                                  \\-> CRASHED (max_crashes inside window_s)
    BACKOFF --start (once due)--> STARTING
    any --reset (naosctl llm restart)--> STOPPED, crash history cleared

A server that dies on every completion (llama.cpp's AMX path once did, with
SIGSEGV) is thus restarted after 1 s, 2 s, 4 s ... and then left alone,
instead of being restarted in a tight loop.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, replace
from typing import Any


class Phase(enum.StrEnum):
    STOPPED = "stopped"  # not running; the next call starts it
    STARTING = "starting"  # spawned, not answering yet
    READY = "ready"  # answering
    BACKOFF = "backoff"  # exited abnormally; the next start waits until retry_at
    CRASHED = "crashed"  # crashed too often: never started again until reset


@dataclass(frozen=True, slots=True)
class CrashPolicy:
    """Backoff after the n-th crash inside the window: ``initial * 2**(n-1)``,
    at most ``max``; ``max_crashes`` inside ``window_s`` seconds: give up."""

    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_crashes: int = 3
    window_s: float = 600.0

    def backoff_s(self, crashes: int) -> float:
        return min(self.backoff_initial_s * 2.0 ** max(crashes - 1, 0), self.backoff_max_s)


@dataclass(frozen=True, slots=True)
class Health:
    phase: Phase = Phase.STOPPED
    since: float = 0.0  # when the current phase began
    starts: int = 0
    crash_times: tuple[float, ...] = ()  # abnormal exits inside the policy's window
    crashes_total: int = 0
    last_exit: str = ""  # "signal SIGSEGV", "exit code 1", "no answer within 300 s"
    retry_at: float = 0.0  # BACKOFF: the earliest next start


def start(h: Health, now: float) -> Health:
    """A new process was spawned (STOPPED or a due BACKOFF -> STARTING)."""
    return replace(h, phase=Phase.STARTING, since=now, starts=h.starts + 1)


def ready(h: Health, now: float) -> Health:
    """It answered (STARTING -> READY)."""
    return replace(h, phase=Phase.READY, since=now)


def exited(h: Health, how: str, now: float, policy: CrashPolicy, *, asked: bool) -> Health:
    """The process is gone; ``asked``: naosd stopped it (not a crash)."""
    if asked:
        return replace(h, phase=Phase.STOPPED, since=now, last_exit=how)
    recent = (*(t for t in h.crash_times if now - t < policy.window_s), now)
    crashed = replace(h, since=now, crash_times=recent, crashes_total=h.crashes_total + 1,
                      last_exit=how)
    if len(recent) >= policy.max_crashes:
        return replace(crashed, phase=Phase.CRASHED)
    return replace(crashed, phase=Phase.BACKOFF, retry_at=now + policy.backoff_s(len(recent)))


def reset(h: Health, now: float) -> Health:
    """Forget the crashes (``naosctl llm restart``): any -> STOPPED."""
    return replace(h, phase=Phase.STOPPED, since=now, crash_times=(), retry_at=0.0)


def wait_s(h: Health, now: float) -> float:
    """Seconds before the next start may begin (0 unless in BACKOFF)."""
    return max(0.0, h.retry_at - now) if h.phase is Phase.BACKOFF else 0.0


def describe_exit(returncode: int) -> str:
    """``-11`` -> ``"signal SIGSEGV"``, ``1`` -> ``"exit code 1"``."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def to_dict(h: Health, now: float, policy: CrashPolicy) -> dict[str, Any]:
    """The JSON-able view for ``llm status``."""
    recent = [t for t in h.crash_times if now - t < policy.window_s]
    return {"state": h.phase.value, "in_state_s": round(max(0.0, now - h.since), 1),
            "starts": h.starts, "crashes": len(recent), "crashes_total": h.crashes_total,
            "max_crashes": policy.max_crashes, "window_s": policy.window_s,
            "last_exit": h.last_exit or None, "retry_in_s": round(wait_s(h, now), 1)}
