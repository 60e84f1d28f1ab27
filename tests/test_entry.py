"""``naos``: ``naos daemon ...`` is naosd, everything else is naosctl
(naosctl/entry.py), run as the real program in a subprocess."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import clean_env, kill_all, naosctl, short_tempdir

from naosd.runtime.procs import descendants, sigterm_with_parent

# The installed script is `naos = naosctl.entry:main`; this runs the same function.
NAOS = [sys.executable, "-c", "from naosctl.entry import main; main()"]
HEAVY = ("thespian", "wasmtime", "apsw", "aiohttp")


def naos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NAOS, *args], capture_output=True, text=True, timeout=60,
                          env=env or clean_env())


def test_the_naos_script_is_the_dispatcher() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert scripts["naos"].value == "naosctl.entry:main"
    assert scripts["naosctl"].value == "naosctl.main:main"  # unchanged
    assert scripts["naosd"].value == "naosd.main:main"


def test_daemon_runs_naosds_own_main() -> None:
    version = naos("daemon", "--version")
    assert version.returncode == 0 and version.stdout.startswith("naosd "), version
    usage = naos("daemon", "--help")
    assert usage.returncode == 0 and "--state-dir" in usage.stdout


def test_a_bad_naosd_option_is_naosds_usage_error() -> None:
    done = naos("daemon", "--no-such-option")
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-option" in done.stderr


def test_everything_else_is_naosctl() -> None:
    assert naos("--version").stdout.startswith("naosctl, version")
    with short_tempdir() as tmp:
        done = naos("--socket", str(tmp / "missing"), "ping")
        direct = naosctl("--socket", str(tmp / "missing"), "ping")
    assert done.returncode == direct.returncode == 4
    assert "not running" in done.stderr


def test_help_lists_daemon_and_options_before_it_are_refused() -> None:
    assert "  daemon  " in naos("--help").stdout
    assert "  daemon  " not in naosctl("--help").stdout  # naosctl itself is unchanged
    done = naos("--socket", "/tmp/x", "daemon", "--version")
    assert done.returncode == 2
    assert "`daemon` must come first" in done.stderr


def test_daemon_imports_nothing_of_naosctl() -> None:
    # naosd forks its actors from this process: its image stays what `naosd` has.
    code = ("import json, sys; sys.argv = ['naos', 'daemon', '--check-config']\n"
            "from naosctl.entry import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('click', 'naosctl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, env=clean_env())
    assert json.loads(out.stdout.splitlines()[-1]) == ["naosctl", "naosctl.entry"]


def test_importing_the_entry_point_stays_light() -> None:
    code = ("import json, sys, naosctl.entry; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout) == []


@contextlib.contextmanager
def naos_daemon(base: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [*NAOS, "daemon", "--socket", str(base / "s"), "--state-dir", str(base / "state"),
           "--no-dashboard"]
    with open(base / "naosd.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, preexec_fn=sigterm_with_parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_all([proc.pid, *descendants(proc.pid)])
            proc.wait(timeout=10)


def wait_answering(base: Path, proc: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (base / "naosd.log").read_text()
        if (base / "s").exists() and naos("--socket", str(base / "s"), "ping",
                                          env=env).returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"naos daemon did not answer:\n{(base / 'naosd.log').read_text()}")


@pytest.mark.e2e
def test_naos_daemon_serves_and_stops_cleanly() -> None:
    with short_tempdir() as base:
        env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                        XDG_CONFIG_HOME=str(base / "xdg-config"))
        with naos_daemon(base, env) as proc:
            wait_answering(base, proc, env)
            pong = naos("--socket", str(base / "s"), "ping", "--json", env=env)
            assert json.loads(pong.stdout)["pid"] == proc.pid  # in process: one pid
            stop = naos("--socket", str(base / "s"), "shutdown", env=env)
            assert stop.returncode == 0, stop.stderr
            assert proc.wait(timeout=60) == 0
        assert not os.path.exists(base / "s")
