"""Methods for running and checking WASM modules in the sandbox pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from actors.domain.wasm_abi import CHANNEL_FUNCTIONS
from actors.wasm.limits import MAX_COMPILE_TIMEOUT_MS, MAX_MODULE_BYTES
from naosd.control.params import Int, Spec, Str
from naosd.control.roles import OPERATE
from naosd.control.table import MethodTable
from naosd.errors import InvalidRequest

if TYPE_CHECKING:
    from naosd.services import Services

METHODS = MethodTable("wasm")
method = METHODS.method

MIB = 1024 * 1024


class _Limits(TypedDict):  # typed keys: a ** of it cannot pass for stream, role, deadline
    fuel: Spec
    memory_mb: Spec
    timeout_ms: Spec
    compile_timeout_ms: Spec


LIMITS = _Limits(fuel=Int(None, lo=1, hi=10**15), memory_mb=Int(None, lo=1, hi=65536),
                 timeout_ms=Int(None, lo=1, hi=3_600_000),
                 compile_timeout_ms=Int(None, lo=1, hi=MAX_COMPILE_TIMEOUT_MS))


def limits_of(p: dict[str, Any]) -> dict[str, int]:
    limits: dict[str, int] = {}
    if p["fuel"] is not None:
        limits["fuel"] = p["fuel"]
    if p["memory_mb"] is not None:
        limits["memory_bytes"] = p["memory_mb"] * MIB
    for key in ("timeout_ms", "compile_timeout_ms"):
        if p[key] is not None:
            limits[key] = p[key]
    return limits


def _module(p: dict[str, Any]) -> bytes:
    module = p["module"]
    if not module:
        raise InvalidRequest("module is empty")
    return bytes(module)


@method("wasm.run", module=Spec(bytes), input=Spec((bytes, str), b""),
        grants=Spec(list, None), **LIMITS, role=OPERATE)
async def wasm_run(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Run a WASI command module in a sandbox worker; input on stdin."""
    stdin = p["input"].encode() if isinstance(p["input"], str) else bytes(p["input"])
    grants = tuple(str(g) for g in (p["grants"] or ()))
    channel = sorted(set(grants) & set(CHANNEL_FUNCTIONS))
    if channel:
        raise InvalidRequest(f"grants {', '.join(channel)} act as an agent over its channel: "
                             "they are for WASM agents (agent.create), not wasm.run")
    result: dict[str, Any] = await d.sandbox.run(_module(p), stdin, limits_of(p), grants)
    await d.db.audit("wasm.run", exit_code=result["exit_code"], fuel=result["fuel_used"],
                     cost_micro_usd=result["cost_micro_usd"], wall_ms=result["wall_ms"])
    return result


@method("wasm.validate", module=Spec(bytes), grants=Spec(list, None),
        max_bytes=Int(None, lo=1, hi=MAX_MODULE_BYTES))
async def wasm_validate(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """Imports, exports, size and a verdict for a module."""
    limits = {"module_bytes": p["max_bytes"]} if p["max_bytes"] else {}
    grants = tuple(str(g) for g in (p["grants"] or ()))
    result: dict[str, Any] = await d.sandbox.validate(_module(p), grants, limits)
    return result


@method("wasm.kill_worker", name=Str("*", max_len=64))
async def wasm_kill_worker(d: Services, p: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL a sandbox worker (the busiest for "*"), to test recovery."""
    return {"killed": p["name"], "pid": await d.sandbox.kill_worker(p["name"])}
