"""The sandbox pool's watchdog, with real worker processes (multiprocTCPBase).

A compile past its deadline is answered with wasm_compile_timeout and its
worker is replaced, the jobs queued behind it run elsewhere; a worker that
stops answering altogether (SIGSTOP here) is killed by the pool's watchdog.
Each scenario runs in a fresh interpreter (see tests/sandbox_pool_scenarios.py:
a process that has used wasmtime cannot fork sandbox workers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.multiproc,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl"),
]

TESTS = Path(__file__).resolve().parent


def scenario(name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    done = subprocess.run([sys.executable, str(TESTS / "sandbox_pool_scenarios.py"), name],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_compile_timeout_replaces_the_worker_and_requeues_its_jobs() -> None:
    result = scenario("compile_timeout")
    assert (result["slow"]["ok"], result["slow"]["code"]) == (False, "wasm_compile_timeout")
    assert result["queued"]["ok"] and result["queued"]["stdout"] == "hi"  # ran elsewhere
    assert result["replaced"] and result["restarts"] == 1
    assert result["next"]["ok"] and result["next"]["stdout"] == "hi"


def test_a_hung_worker_is_killed_by_the_watchdog() -> None:
    result = scenario("hung_worker")
    assert (result["hung"]["ok"], result["hung"]["code"]) == (False, "sandbox_crashed")
    assert "hung" in result["hung"]["message"]
    assert result["replaced"]
    assert result["next"]["ok"] and result["next"]["stdout"] == "hi"
