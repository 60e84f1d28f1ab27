"""An agent's handler process, from its actor's side.

The actor opens the agent's channel (it holds the key), starts
``naos.host`` on it, confined as the definition says, and reads one line
of JSON on the host's stdout pipe: ``{"loaded": true, "pid": N}`` once the
handler loaded (naosd has it too, on the channel), or ``{"loaded": false,
"error": ...}``.  The host keeps that pipe for its last words
(``{"crashed": reason}`` before it exits after a handler raised); everything
else it prints goes to the message's log lines.  The process dies with the
actor (parent-death signal); :meth:`HandlerProcess.stop` ends it first
(SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from naosd.runtime.agent_link import open_channel
from naosd.runtime.hosting import Hosting

HOST_MODULE = "naos.host"
STATUS_LIMIT = 64 * 1024
# What the host's exit codes mean (naos.host).
EXIT_MEANINGS = {70: "the handler raised", 71: "the handler could not be loaded",
                 72: "no channel to naosd", 121: "confinement could not be applied"}


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What the actor needs to start an agent's handler."""

    agent: str
    snapshot: str  # the directory the handler's code is read from
    fields: dict[str, Any]  # env, cwd, grants, limits, confinement (the definition's)


class HandlerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], status_fd: int, confined: bool) -> None:
        self._proc = proc
        self._status_fd = status_fd
        self._buffer = b""
        self._why: str | None = None  # how it ended, once known
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
            return cls._launch(spec, hosting, work, ["--fd", str(sock.fileno())],
                               sock.fileno())
        finally:
            sock.close()  # the handler holds the only copy now

    @classmethod
    def probe(cls, spec: HandlerSpec, hosting: Hosting, load: dict[str, Any]
              ) -> HandlerProcess:
        """Start the host only to load the handler (confined) and say how it went."""
        work = hosting.work_dir(spec.agent)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls._launch(spec, hosting, work, ["--probe", json.dumps(load)], None)

    @classmethod
    def _launch(cls, spec: HandlerSpec, hosting: Hosting, work: Path, args: list[str],
                channel_fd: int | None) -> HandlerProcess:
        from naosd.runtime.confine.launch import interpreter_paths, launch
        from naosd.runtime.confine.policy import HostPaths, confinement_for

        host = HostPaths(interpreter_paths(), spec.snapshot, str(work), hosting.protected)
        conf = confinement_for(spec.fields, host)
        read, write = os.pipe()
        try:
            proc = launch(conf, HOST_MODULE, args, channel_fd=channel_fd, log_fd=write)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        os.set_blocking(read, False)
        return cls(proc, read, conf.mode != "none")

    def wait_loaded(self, timeout_s: float) -> dict[str, Any]:
        """The host's first status line (blocking, bounded); a host that exits
        or stays silent says why."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._line()
            if line is not None:
                return line
            if self._proc.poll() is not None:
                self._drain()
                line = self._line()
                return line if line is not None else {
                    "loaded": False, "error": "its process died while loading the handler "
                    f"({describe_exit(self._proc.returncode)})"}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"loaded": False, "error": f"did not load within {timeout_s:g}s"}
            select.select([self._status_fd], [], [], min(left, 0.25))
            self._drain()

    def exited(self) -> str | None:
        """None while it runs; else why it ended (its last words if it said any)."""
        if self._why is not None:
            return self._why
        code = self._proc.poll()
        if code is None:
            return None
        self._signal_group(signal.SIGKILL)  # what it forked dies with it
        self._drain()
        words = self._line()
        if words is not None and words.get("crashed"):
            self._why = f"{words['crashed']} ({describe_exit(code)})"
        else:
            self._why = describe_exit(code)
        return self._why

    def stop(self, grace_s: float) -> str:
        """SIGTERM, SIGKILL after ``grace_s``; how it ended. Whatever the
        handler started goes with it (its process group)."""
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
                self._proc.wait(timeout=5)
        self._signal_group(signal.SIGKILL)
        return describe_exit(self._proc.returncode)

    def kill(self) -> None:
        """SIGKILL the handler and every process it started."""
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    def _signal_group(self, sig: int) -> None:
        """Signal the handler's process group: it leads its own session
        (``start_new_session``) and, confined, may not leave it (seccomp
        refuses ``setsid``/``setpgid``), so the group is the handler and
        everything it forked. A child of a handler with ``processes > 0``
        otherwise outlived its agent, holding the agent's channel."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._status_fd)

    def _drain(self) -> None:
        while len(self._buffer) < STATUS_LIMIT:
            try:
                chunk = os.read(self._status_fd, 4096)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self._buffer += chunk

    def _line(self) -> dict[str, Any] | None:
        self._drain()
        if b"\n" not in self._buffer:
            return None
        raw, self._buffer = self._buffer.split(b"\n", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            return {"loaded": False, "error": raw[:500].decode("utf-8", "replace")}
        return value if isinstance(value, dict) else None


def describe_exit(code: int | None) -> str:
    if code is None:
        return "handler still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"handler killed by {name}"
    meaning = EXIT_MEANINGS.get(code)
    return f"handler exited with code {code}" + (f" ({meaning})" if meaning else "")
