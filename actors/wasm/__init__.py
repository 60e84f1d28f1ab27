"""The WASM sandbox: compile, cache and run WASI command modules under limits.

Only ``actors.wasm.engine`` imports wasmtime, and only when one of its names is
used; the guest ABI is in docs/wasm-abi.md; the errors are declared in
``naosd.errors.wasm`` (import them from ``naosd.errors``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from actors.domain.wasm_abi import (
    HOST_FUNCTIONS,
    NAOS_FAULT,
    NAOS_HOST_ERROR,
    NAOS_INVALID,
    NAOS_NO_FUEL,
    NAOS_NOT_FOUND,
    NAOS_OK,
    NAOS_TOO_LARGE,
)
from actors.wasm.limits import Limits, price_micro_usd

if TYPE_CHECKING:
    from actors.wasm.engine import (
        CacheStats,
        CompiledModule,
        ExternInfo,
        HostServices,
        RunResult,
        ValidationReport,
        WasmEngine,
        denied_imports,
    )

_FROM_ENGINE = frozenset({
    "CacheStats", "CompiledModule",
    "ExternInfo", "HostServices", "RunResult", "ValidationReport", "WasmEngine",
    "denied_imports",
})


def __getattr__(name: str) -> Any:
    """The engine's names, imported on first use: the limits and the module
    checks stay importable (by the pool, by naosd) without wasmtime."""
    if name in _FROM_ENGINE:
        return getattr(importlib.import_module("actors.wasm.engine"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
