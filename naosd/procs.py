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
