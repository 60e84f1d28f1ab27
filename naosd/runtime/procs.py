"""Processes: liveness, ancestry and Linux prctl (a leaf module: stdlib only).

The prctl function is looked up once, at import: ``sigterm_with_parent`` runs
as a ``preexec_fn`` between fork and exec, where nothing may be imported or
allocated."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

HAVE_PROC = os.path.isdir("/proc/self")
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_CHILD_SUBREAPER = 36


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def prctl(option: int, arg: int) -> bool:
    """``prctl(option, arg)``; False where it failed or does not exist."""
    return _PRCTL is not None and int(_PRCTL(option, arg, 0, 0, 0)) == 0


def set_pdeathsig(sig: int = signal.SIGKILL, *, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    With ``expected_parent``, exit at once (``os._exit(1)``) if the parent
    already changed: it died before the signal was armed.
    """
    armed = prctl(PR_SET_PDEATHSIG, int(sig))
    if armed and expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)
    return armed


def get_pdeathsig() -> int:
    """The armed parent-death signal of this process (0: none or not Linux)."""
    if _PRCTL is None:
        return 0
    value = ctypes.c_int(0)
    _PRCTL(PR_GET_PDEATHSIG, ctypes.byref(value), 0, 0, 0)
    return value.value


def sigterm_with_parent() -> None:
    """``preexec_fn``: the started process gets SIGTERM when its starter dies
    (a test or benchmark killed by a timeout leaves no daemon behind)."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def process_alive(pid: object) -> bool:
    """False if ``pid`` is gone or a zombie (killed, not yet reaped).

    Without /proc (macOS) a zombie counts as alive: only a vanished pid is
    dead there (its parent reaps it soon)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return False
    try:
        stat = os.read(fd, 512)
    except ProcessLookupError:  # it went between the open and the read (ESRCH)
        return False
    finally:
        os.close(fd)
    return stat.rsplit(b")", 1)[-1].split()[:1] != [b"Z"]


def parent_pid(pid: int) -> int:
    """``pid``'s parent from ``/proc``; raises OSError or ValueError."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (one pass over ``/proc``)."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                by_parent.setdefault(parent_pid(int(entry)), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    found: list[int] = []
    todo = [root]
    while todo:
        kids = by_parent.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def is_descendant(pid: int, ancestor: int) -> bool:
    """True if ``ancestor`` is among ``pid``'s parents (``/proc``)."""
    current = pid
    for _ in range(64):
        try:
            current = parent_pid(current)
        except (OSError, ValueError, IndexError):
            return False
        if current == ancestor:
            return True
        if current <= 1:
            return False
    return False
