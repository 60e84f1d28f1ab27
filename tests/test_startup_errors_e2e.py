"""naosd on a state directory or database it cannot use (issue 12.6): one error
line naming the path and the reason, exit 1, never a traceback.

Tests run as root, so chmod cannot make a directory read-only: the read-only and
the full disk cases use a private mount namespace (``unshare -m``) with a
read-only bind mount or a tiny tmpfs, which vanishes with the process; they are
skipped where mounting is not allowed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import clean_env

pytestmark = pytest.mark.e2e


def naosd_cmd(base: Path, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "naosd", "--socket", str(base / "s"), "--state-dir",
            str(state), "--dashboard-port", "0", *extra]


def run(cmd: list[str], base: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_CONFIG_HOME=str(base / "cfg"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def in_namespace(setup: str, cmd: list[str]) -> list[str]:
    """``cmd`` in a new mount namespace after the shell commands ``setup``."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs t /mnt"],
                           capture_output=True, check=False, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace: {probe.stderr.decode()[:200]}")
    return ["unshare", "-m", "sh", "-c", f'{setup} && exec "$@"', "naosd", *cmd]


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if " ERROR " in line]


def test_state_dir_under_a_regular_file(base: Path):
    (base / "file").write_text("not a directory")
    result = run(naosd_cmd(base, base / "file" / "state"), base)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert line.endswith(f"naosd: cannot use {base}/file/state: Not a directory"), line


def test_read_only_state_dir(base: Path):
    ro = base / "ro"
    (ro / "state").mkdir(parents=True)
    setup = f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro}"
    result = run(in_namespace(setup, naosd_cmd(base, ro / "state")), base)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"cannot use {ro}/state" in line and "Read-only file system" in line, line


@pytest.mark.parametrize("fill", [
    pytest.param("", id="too-small-for-the-database"),
    pytest.param(" && (dd if=/dev/zero of={full}/fill bs=1k count=64 2>/dev/null; true)",
                 id="already-full"),
])
def test_full_disk(base: Path, fill: str):
    full = base / "full"
    full.mkdir()
    setup = f"mount -t tmpfs -o size=8k tmpfs {full}" + fill.format(full=full)
    result = run(in_namespace(setup, naosd_cmd(base, full / "state")), base)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert f"{full}/state" in line, line
    assert any(reason in line for reason in ("disk is full", "No space left", "disk I/O"))


def test_unwritable_database_path(base: Path):
    result = run(naosd_cmd(base, base / "state", "--db", "/proc/naos.db"), base)
    assert result.returncode == 1
    [line] = error_lines(result)
    assert "/proc/naos.db: unable to open database file" in line, line
