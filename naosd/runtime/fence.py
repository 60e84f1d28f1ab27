"""Fencing on a cluster member: agents a leader placed here die when that
leader stops beating (stdlib only; imported by actors and by naosd).

Thespian never stops actors whose parent lives on another node: neither a
leader that dies nor one that stops gracefully ends the agents it placed on a
member. So every process the leader places here (its probe and its agents)
registers under ``<state_dir>/cluster/<run>/<pid>``, where ``run`` names that
leader's incarnation, and the probe touches ``<run>/beat`` at every
heartbeat. The member's naosd (:func:`fence_loop`) kills the registered
processes of every run whose beat is older than the lease
(``heartbeat_s * lost_after``) and removes the run's directory.

``FENCE_DIR`` is set in naosd before the actor system starts, so every actor
of this node, forked from it, inherits it; it stays None on a leader that is
not also a member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from naosd.runtime.procs import is_descendant

log = logging.getLogger(__name__)

FENCE_DIR: Path | None = None
_RUN = re.compile(r"^[0-9a-f]{32}$")
BEAT = "beat"


def _run_dir(run: str) -> Path | None:
    if FENCE_DIR is None or not isinstance(run, str) or not _RUN.match(run):
        return None
    return FENCE_DIR / run


def touch_beat(run: str) -> None:
    """The leader of ``run`` is alive (called by its probe at every beat)."""
    d = _run_dir(run)
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    (d / BEAT).touch()


def register(run: str, pid: int) -> None:
    """Process ``pid`` was placed here by the leader of ``run``."""
    d = _run_dir(run)
    if d is None:
        return
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (d / BEAT).exists():
        (d / BEAT).touch()  # the lease starts now
    (d / str(pid)).touch()


def expired(root: Path, lease_s: float, now: float | None = None) -> dict[str, list[int]]:
    """Runs under ``root`` whose beat is older than ``lease_s``, with their pids."""
    now = time.time() if now is None else now
    out: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError):
        for d in root.iterdir():
            if not d.is_dir() or not _RUN.match(d.name):
                continue
            try:
                beat = (d / BEAT).stat().st_mtime
            except FileNotFoundError:
                beat = d.stat().st_mtime
            if now - beat > lease_s:
                out[d.name] = sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())
    return out


def fence(root: Path, run: str, pids: list[int], ancestor: int) -> list[int]:
    """SIGKILL those of ``pids`` that are still ``ancestor``'s descendants;
    remove the run's directory. Returns the pids killed."""
    killed = []
    for pid in pids:
        if is_descendant(pid, ancestor):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    shutil.rmtree(root / run, ignore_errors=True)
    return killed


async def fence_loop(daemon: Any, root: Path, interval_s: float, lease_s: float) -> None:
    """In a member's naosd: fence the runs whose leader stopped beating."""
    while True:
        await asyncio.sleep(interval_s)
        for run, pids in expired(root, lease_s).items():
            killed = fence(root, run, pids, os.getpid())
            log.warning("cluster: the leader of run %s stopped beating; killed %s", run, killed)
            await daemon.db.audit("cluster.fenced", actor="cluster", run=run, pids=killed,
                                  lease_s=lease_s)
