from __future__ import annotations

import os
import subprocess
import sys
import time

from naosd.runtime.procs import process_alive


def test_live_zombie_and_gone_processes():
    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not reaped yet: a zombie, which counts as dead.
        deadline = time.monotonic() + 10
        while process_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not process_alive(child.pid)
    finally:
        child.wait(timeout=10)
    assert not process_alive(child.pid)


def test_nonsense_pids_are_not_alive():
    for pid in (None, 0, -1, True, "12"):
        assert not process_alive(pid)
