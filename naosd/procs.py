"""Process liveness (a leaf module: stdlib only)."""

from __future__ import annotations

import os

HAVE_PROC = os.path.isdir("/proc/self")


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
