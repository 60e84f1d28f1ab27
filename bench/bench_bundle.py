"""The one-file build: its size, and how long it takes to start.

    bash deploy/build-bundle.sh && python bench/bench_bundle.py [--bundle dist/naos]
        [--python /usr/bin/python3.11]

Whole processes, each run with a clean environment (PATH: a directory holding
only ``python3.X`` = ``--python``, then /usr/bin:/bin; HOME in a temporary
directory; no virtualenv), as on a target.  ``--python`` defaults to the
interpreter this runs on (the one that built the bundle, with
deploy/build-bundle.sh's default): the /bin/sh boot then goes straight to the
laid-out virtualenv.  With another interpreter of the same minor version it
cannot (its fast path names the build interpreter): pex's bootstrap runs first.

1. cold: ``naos --version`` with an empty ``$PEX_ROOT`` (the first run lays the
   bundle out as a virtualenv), ``--cold`` times, each with a new HOME;
2. warm, interleaved so that drifting load hits all alike: ``PY -c pass`` with
   the interpreter the bundle's virtualenv runs on (the floor), ``naos
   --version`` and ``naos ping`` against a ``naos daemon`` started from the
   bundle; for reference the installed scripts of this virtualenv
   (``naos --version``, ``naos ping``) against its own interpreter's ``-c pass``;
3. ``naos daemon`` from start to its first pong (warm), and the size of the
   file and of what it lays out.

No assertions: this prints numbers.  Machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import ROOT, descendants, kill, ms_line, pct, section, sigterm_with_parent

from naosctl.client import Client
from naosd.errors import NaosError


def clean_env(home: Path, pybin: Path) -> dict[str, str]:
    return {"PATH": f"{pybin}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(home / "run"), "XDG_STATE_HOME": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache")}


def run_ms(cmd: Sequence[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, timeout=300)
    return (time.perf_counter() - t0) * 1e3


def venv_python(home: Path) -> Path:
    """The interpreter of the virtualenv the bundle laid out under HOME."""
    found = sorted((home / ".cache" / "pex" / "venvs").glob("*/s/*/venv/bin/python"))
    if not found:
        raise SystemExit(f"no laid-out virtualenv under {home}/.cache/pex")
    return found[0]


def start_daemon(cmd: list[str], base: Path, env: dict[str, str]
                 ) -> tuple[subprocess.Popen[bytes], float]:
    """``cmd`` (naosd's options appended) until its first pong; its ms."""
    sock = base / "s"
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--socket", str(sock), "--state-dir", str(base / "state"),
                             "--no-dashboard", "--log-level", "warning"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=sigterm_with_parent)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sock.exists():
            try:
                with Client(sock) as c:
                    c.call("ping")
                return proc, (time.perf_counter() - t0) * 1e3
            except (NaosError, OSError):
                pass
        time.sleep(0.01)
    kill([proc.pid, *descendants(proc.pid)])
    raise SystemExit(f"{cmd} did not answer")


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    children = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        kill([proc.pid, *children])
        proc.wait(timeout=10)


def cold(naos: Path, pybin: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        with tempfile.TemporaryDirectory(prefix="naos-cold-") as d:
            out.append(run_ms([str(naos), "--version"], clean_env(Path(d), pybin)))
    return out


def warm(fns: dict[str, tuple[list[str], dict[str, str]]], n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(n + 3):
        for name, (cmd, env) in fns.items():
            took = run_ms(cmd, env)
            if i >= 3:
                out[name].append(took)
    return out


def du(path: Path) -> int:
    done = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[0])


def daemon_starts(cmds: dict[str, list[str]], env: dict[str, str], n: int
                  ) -> dict[str, list[float]]:
    """Start to first pong, alternating, each in a fresh state dir."""
    out: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(n):
        for name, cmd in cmds.items():
            with tempfile.TemporaryDirectory(prefix="naos-d-", dir="/tmp") as d:
                proc, took = start_daemon(cmd, Path(d), env)
                stop_daemon(proc)
            out[name].append(took)
    return out


def report(samples: dict[str, list[float]], floors: dict[str, str]) -> None:
    """``floors``: the floor's name for each prefix (``bundle: ...``)."""
    for name, values in samples.items():
        floor = floors.get(name.split(":")[0])
        ratio = (f"  {pct(values, 0.5) / pct(samples[floor], 0.5):5.2f}x floor"
                 if floor and floor != name else "")
        print(ms_line(name, values) + ratio)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=ROOT / "dist" / "naos")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--daemons", type=int, default=3)
    ap.add_argument("--python", default=os.path.realpath(sys._base_executable),
                    help="the target's interpreter (default: this one's base)")
    args = ap.parse_args()
    dev = Path(sys.executable).parent  # this virtualenv's installed scripts
    with tempfile.TemporaryDirectory(prefix="naos-b-", dir="/tmp") as d:
        home = Path(d)
        (home / "run").mkdir(mode=0o700)
        pybin = home / "pybin"
        pybin.mkdir()
        (pybin / f"python{sys.version_info[0]}.{sys.version_info[1]}").symlink_to(args.python)
        naos = home / "naos"
        shutil.copy2(args.bundle, naos)
        env = clean_env(home, pybin)
        section(f"{args.bundle}: {args.bundle.stat().st_size / 2**20:.1f} MiB, on {args.python}")
        print(ms_line("cold: naos --version (empty PEX_ROOT)", cold(naos, pybin, args.cold)))
        run_ms([str(naos), "--version"], env)  # lay it out once under this HOME
        print(f"laid out under $HOME/.cache/pex: {du(home / '.cache' / 'pex') / 2**20:.0f} MiB;"
              f" interpreter {os.path.realpath(venv_python(home))}")
        section("daemon: start to first pong (warm)")
        report(daemon_starts({"bundle: naos daemon": [str(naos), "daemon"],
                              "installed: naosd": [str(dev / "naosd")]}, env, args.daemons),
               {"bundle": "installed: naosd"})
        proc, _ = start_daemon([str(naos), "daemon"], home / "run", env)
        try:
            sock = str(home / "run" / "s")
            samples = warm({
                "floor: PY -c pass": ([args.python, "-c", "pass"], env),
                "bundle: naos --version": ([str(naos), "--version"], env),
                "bundle: naos ping": ([str(naos), "--socket", sock, "ping"], env),
                "floor: venv python -c pass": ([sys.executable, "-c", "pass"], env),
                "installed: naos --version": ([str(dev / "naos"), "--version"], env),
                "installed: naos ping": ([str(dev / "naos"), "--socket", sock, "ping"], env),
            }, args.n)
        finally:
            stop_daemon(proc)
    section("warm starts (whole processes)")
    report(samples, {"bundle": "floor: PY -c pass", "installed": "floor: venv python -c pass"})


if __name__ == "__main__":
    main()
