"""The WASM sandbox: compile, cache and run WASI command modules under limits.

Only ``actors.wasm.engine`` imports wasmtime; the guest ABI is in docs/wasm-abi.md; the
errors are declared in ``naosd.errors.wasm`` (import them from ``naosd.errors``).
"""

from __future__ import annotations

from actors.wasm.engine import (
    HOST_FUNCTIONS,
    NAOS_FAULT,
    NAOS_HOST_ERROR,
    NAOS_INVALID,
    NAOS_NO_FUEL,
    NAOS_NOT_FOUND,
    NAOS_OK,
    NAOS_TOO_LARGE,
    CacheStats,
    CompiledModule,
    ExternInfo,
    HostServices,
    RunResult,
    ValidationReport,
    WasmEngine,
    denied_imports,
)
from actors.wasm.limits import Limits, price_micro_usd

__all__ = [
    "HOST_FUNCTIONS",
    "NAOS_FAULT",
    "NAOS_HOST_ERROR",
    "NAOS_INVALID",
    "NAOS_NOT_FOUND",
    "NAOS_NO_FUEL",
    "NAOS_OK",
    "NAOS_TOO_LARGE",
    "CacheStats",
    "CompiledModule",
    "ExternInfo",
    "HostServices",
    "Limits",
    "RunResult",
    "ValidationReport",
    "WasmEngine",
    "denied_imports",
    "price_micro_usd",
]
