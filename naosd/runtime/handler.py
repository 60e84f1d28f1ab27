"""An agent's handler process, from its actor's side.

The actor opens the agent's channel (it holds the key), starts
``naos.host`` on it, confined as the definition says, and from then on only
watches the process: :meth:`HandlerProcess.exited` says whether and how it
ended, :meth:`HandlerProcess.stop` ends it (SIGTERM, then SIGKILL).  The
process dies with the actor too (parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naosd.runtime.agent_link import open_channel
from naosd.runtime.hosting import Hosting

HOST_MODULE = "naos.host"
# What the host's exit codes mean (naos.host).
EXIT_MEANINGS = {70: "the handler raised", 71: "the handler could not be loaded",
                 72: "no channel to naosd", 125: "confinement could not be applied"}


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What the actor needs to start an agent's handler."""

    agent: str
    snapshot: str  # the directory the handler's code is read from ("" for templates)
    fields: dict[str, Any]  # env, cwd, grants, limits, confinement


class HandlerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], confined: bool) -> None:
        self._proc = proc
        self.confined = confined

    @property
    def pid(self) -> int:
        return self._proc.pid

    @classmethod
    def start(cls, spec: HandlerSpec, hosting: Hosting) -> HandlerProcess:
        """Open the channel and start the host on it.

        Raises:
            Unavailable: naosd's agent socket cannot be reached.
            PermissionDenied: naosd refused the channel.
            InvalidRequest / ConfinementUnavailable: the confinement cannot be built.
        """
        work = hosting.work_dir(spec.agent)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock = open_channel(hosting.agent_socket, spec.agent, hosting.key)
        try:
            proc, confined = _launch(spec, hosting, work, sock.fileno())
        finally:
            sock.close()  # the handler holds the only copy now
        return cls(proc, confined)

    def exited(self) -> str | None:
        """None while it runs; else how it ended (reaped)."""
        code = self._proc.poll()
        return None if code is None else describe_exit(code)

    def stop(self, grace_s: float) -> str:
        """SIGTERM, SIGKILL after ``grace_s``; how it ended."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                self._proc.wait(timeout=5)
        return describe_exit(self._proc.returncode)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()


def _launch(spec: HandlerSpec, hosting: Hosting, work: Path,
            fd: int) -> tuple[subprocess.Popen[bytes], bool]:
    from naosd.runtime.confine.launch import interpreter_paths, launch
    from naosd.runtime.confine.policy import HostPaths, confinement_for

    snapshot = spec.snapshot or _template_dir()
    host = HostPaths(interpreter_paths(), snapshot, str(work), hosting.protected)
    conf = confinement_for(spec.fields, host)
    proc = launch(conf, HOST_MODULE, ["--fd", str(fd)], channel_fd=fd)
    return proc, conf.mode != "none"


def _template_dir() -> str:
    import actors.templates

    return str(Path(actors.templates.__file__).parent)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"handler killed by {name}"
    meaning = EXIT_MEANINGS.get(code)
    return f"handler exited with code {code}" + (f" ({meaning})" if meaning else "")


def wait_gone(pid: int, timeout_s: float) -> bool:
    """True once ``pid`` no longer exists (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.005)
    return False


