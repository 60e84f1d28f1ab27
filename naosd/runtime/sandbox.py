"""The sandbox pool, as naosd's services see it: run and validate WASM
modules in the sandbox worker processes.

The pool's address is found through the root once and cached; the root
restarts a dead pool under a new address, so a run that finds the old one
gone (``actor_gone``: not delivered) is resent once to the new one.
"""

from __future__ import annotations

import uuid
from typing import Any

from actors.messages import KillChild, RunWasm, ValidateWasm, WhereIs
from actors.wasm.limits import MAX_MODULE_BYTES, MAX_STDIN_BYTES, job_budget_s
from naosd.errors import ActorGone, WasmInputTooLarge, WasmModuleTooLarge
from naosd.runtime.bridge import Bridge

# Beyond a job's own budget (compile deadline + run timeout): the worker answers
# wasm_compile_timeout or wasm_timeout first, and the pool's watchdog (5 s past
# the budget) answers for a hung worker.
SLACK_S = 10.0


class Sandbox:
    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._pool: Any = None

    async def run(self, module: bytes, stdin: bytes, limits: dict[str, int],
                  grants: tuple[str, ...] = (), agent: str = "") -> dict[str, Any]:
        """One run in a fresh instance; the worker's summary (exit code,
        stdout, stderr, fuel, cost, memory, wall time, logs)."""
        _check_sizes(module, stdin)
        wait = job_budget_s(limits, run=True) + SLACK_S
        msg = RunWasm(uuid.uuid4().hex, module, stdin, limits, grants, agent)
        result: dict[str, Any] = (await self._ask(msg, wait)).result
        return result

    async def validate(self, module: bytes, grants: tuple[str, ...] = (),
                       limits: dict[str, int] | None = None) -> dict[str, Any]:
        """Imports, exports, size and a verdict (``ok``, ``reason``)."""
        _check_sizes(module, b"")
        msg = ValidateWasm(uuid.uuid4().hex, module, limits or {}, grants)
        wait = job_budget_s(limits or {}, run=False) + SLACK_S
        result: dict[str, Any] = (await self._ask(msg, wait)).result
        return result

    async def kill_worker(self, name: str) -> int:
        """SIGKILL a worker ("*": the busiest); its pid."""
        pid: int = (await self._ask(KillChild(uuid.uuid4().hex, name), None)).result
        return pid

    async def _address(self, *, fresh: bool = False) -> Any:
        if fresh or self._pool is None:
            self._pool = (await self._bridge.ask(WhereIs(uuid.uuid4().hex, "sandbox"))).result
        return self._pool

    async def _ask(self, msg: Any, wait: float | None) -> Any:
        try:
            return await self._bridge.ask_to(await self._address(), msg, timeout_s=wait)
        except ActorGone:  # the pool was restarted: not delivered, so resend
            return await self._bridge.ask_to(await self._address(fresh=True), msg,
                                             timeout_s=wait)


def _check_sizes(module: bytes, stdin: bytes) -> None:
    """Refuse here what no worker would take: nothing that large is shipped."""
    if len(module) > MAX_MODULE_BYTES:
        raise WasmModuleTooLarge(f"module is {len(module)} bytes; the limit is "
                                 f"{MAX_MODULE_BYTES}")
    if len(stdin) > MAX_STDIN_BYTES:
        raise WasmInputTooLarge(f"input is {len(stdin)} bytes; the limit is {MAX_STDIN_BYTES}")
