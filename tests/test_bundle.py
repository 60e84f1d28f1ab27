"""The one-file build (deploy/build-bundle.sh), built once for this module and
run as a target would: copied into an empty directory and started with a clean
environment (no virtualenv on PATH, no VIRTUAL_ENV, HOME and the XDG dirs in a
temporary directory), on another CPython 3.11 than the one that built it when
the machine has one (Debian's /usr/bin/python3.11 here).

The build needs pip to reach the package index (as .ci/run's own install does);
``-m "not bundle"`` leaves these tests out."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import kill_all, short_tempdir

from naosd.runtime.procs import descendants, sigterm_with_parent

ROOT = Path(__file__).resolve().parent.parent
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
BUILD_TIMEOUT_S = 900

pytestmark = [pytest.mark.bundle, pytest.mark.timeout(BUILD_TIMEOUT_S + 300),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux bundle")]


@dataclass
class Target:
    """An empty directory with the bundle in it, and a clean environment."""

    naos: Path
    home: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.naos), *args], capture_output=True, text=True,
                              timeout=timeout, env=env or self.env, cwd=self.naos.parent)


def base_interpreter_dir() -> str:
    """Where the interpreter this virtualenv was made from lives (a fallback
    on PATH, after /usr/bin, for a machine without a system python3.11)."""
    return str(Path(sys.base_prefix) / "bin")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "naos"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHON"] = sys.executable
    done = subprocess.run(["bash", str(ROOT / "deploy" / "build-bundle.sh"), "-o", str(out)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture
def target(bundle: Path) -> Iterator[Target]:
    with short_tempdir() as base:
        (base / "bin").mkdir()
        naos = base / "bin" / "naos"
        shutil.copy2(bundle, naos)
        home = base / "home"
        home.mkdir()
        env = {"PATH": f"/usr/bin:/bin:{base_interpreter_dir()}", "HOME": str(home),
               "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": str(base),
               "XDG_STATE_HOME": str(home / "state"), "XDG_CONFIG_HOME": str(home / "config"),
               "XDG_CACHE_HOME": str(home / "cache")}
        yield Target(naos, home, env)


@contextlib.contextmanager
def daemon(t: Target, sock: Path, state: Path) -> Iterator[subprocess.Popen[bytes]]:
    log_path = t.home / "naosd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(t.naos), "daemon", "--socket", str(sock), "--state-dir", str(state),
             "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=t.env, cwd=t.naos.parent,
            preexec_fn=sigterm_with_parent)
    try:
        deadline = time.monotonic() + 120  # the first run lays the bundle out
        while not (sock.exists() and t.run("--socket", str(sock), "ping").returncode == 0):
            assert proc.poll() is None, f"naos daemon exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            kill_all([proc.pid, *descendants(proc.pid)])
            proc.wait(timeout=10)


def test_the_bundle_runs_naosd_and_an_agent_from_a_clean_environment(target: Target) -> None:
    sock, state = target.naos.parent.parent / "s", target.home / "naosd"
    with daemon(target, sock, state) as proc:
        pong = target.run("--socket", str(sock), "ping", "--json")
        assert pong.returncode == 0, pong.stderr
        assert json.loads(pong.stdout)["pid"] == proc.pid  # exec'd, not a child: one pid
        created = target.run("--socket", str(sock), "create", "e", "--template", "echo")
        assert created.returncode == 0, created.stderr
        ran = target.run("--socket", str(sock), "run", "e", "--input", '{"a":1}')
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == {"a": 1}
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        stopped = target.run("--socket", str(sock), "shutdown")
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(timeout=60) == 0
    # It ran from the virtualenv it laid out under $HOME/.cache/pex, on a 3.11.
    laid_out = target.home / ".cache" / "pex" / "venvs"
    assert cmdline[0].startswith(bytes(laid_out)), cmdline
    assert os.path.basename(os.path.realpath(cmdline[0])).startswith(f"python{VERSION}".encode())


HOST_PROBE = """
import json, os, sys
from pathlib import Path
import actors.templates
from naosd.runtime.confine.launch import interpreter_paths, launch
from naosd.runtime.confine.policy import HostPaths, confinement_for
from naosd.runtime.confine.support import probe

work = os.path.realpath(sys.argv[1])
snapshot = os.path.realpath(Path(actors.templates.__file__).parent)
conf = confinement_for({}, HostPaths(interpreter_paths(), snapshot, work, ()))
r, w = os.pipe()
proc = launch(conf, "naos.host", ["--fd", "99"], log_fd=w)
os.close(w)
with os.fdopen(r) as log:
    said = log.read()
print(json.dumps({"code": proc.wait(timeout=60), "mode": conf.mode,
                  "missing": probe().missing(), "said": said}))
"""


def test_the_bundles_interpreter_starts_the_confined_handler_host(target: Target) -> None:
    # What an agent actor does for a handler: `sys.executable -I -B -m naos.host`,
    # confined as a definition with no fields is (Landlock, seccomp, namespaces where
    # the kernel has them). -I ignores PYTHONPATH: the host must be importable from
    # the interpreter alone. Given no channel it exits 72 after importing itself.
    work = target.home / "work"
    work.mkdir()
    env = {**target.env, "PEX_INTERPRETER": "1"}
    done = target.run("-c", HOST_PROBE, str(work), env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 72, result  # 1 would be "No module named 'naos'"
    assert "no channel" in result["said"]
    assert result["mode"] == "full" or result["missing"]


def other_python() -> str | None:
    """A CPython of another minor version on this machine, if any: the system's,
    or one installed beside this one (pyenv's layout)."""
    for minor in (12, 13, 10):
        name = f"python3.{minor}"
        beside = sorted(Path(sys.base_prefix).parent.glob(f"3.{minor}.*/bin/{name}"))
        for path in [Path("/usr/bin") / name, Path("/usr/local/bin") / name, *beside]:
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def test_without_its_python_version_the_bundle_says_so(target: Target) -> None:
    other = other_python()
    if other is None:
        pytest.skip("no CPython of another minor version on this machine")
    pybin = target.home / "pybin"
    pybin.mkdir()
    name = os.path.basename(other)
    (pybin / name).symlink_to(other)
    done = target.run("--version", env={**target.env, "PATH": str(pybin)})
    assert done.returncode != 0
    assert "Failed to find compatible interpreter" in done.stderr, done.stderr
    assert f"CPython=={name.removeprefix('python')}" in done.stderr
