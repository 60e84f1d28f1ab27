"""Errors of the WASM sandbox, all under ``naosd.errors.NaosError``::

    WasmError (wasm_error, 1)
    ├── WasmInvalidModule (wasm_invalid_module, 2)      not wasm, fails validation, not a command
    │   ├── WasmModuleTooLarge (wasm_module_too_large, 2)
    │   │   └── WasmModuleTooComplex (wasm_module_too_complex, 2)  over Limits.functions
    │   └── WasmImportDenied (wasm_import_denied, 2)    imports something not granted
    ├── WasmInputTooLarge (wasm_input_too_large, 2)     stdin over Limits.stdin_bytes
    ├── WasmCacheUnsafe (wasm_cache_unsafe, 6)          cache dir not ours or not 0700
    ├── WasmCompileTimeout (wasm_compile_timeout)       compiling took over
    │                                                   Limits.compile_timeout_ms (abandoned;
    │                                                   a sandbox worker is replaced)
    └── WasmRunError (wasm_run_error, 1)                the guest ran and was stopped;
        │                                               ``.result`` says what it used
        ├── WasmOutOfFuel (wasm_out_of_fuel)
        ├── WasmTimeout (wasm_timeout)                  also a TimeoutError
        ├── WasmMemoryLimit (wasm_memory_limit)         inferred (memory.grow gave -1)
        ├── WasmOutputTooLarge (wasm_output_too_large)
        ├── WasmTrap (wasm_trap)                        ``.trap_code``: "unreachable", ...
        └── WasmExit (wasm_exit)                        only from RunResult.raise_for_exit()

A non-zero exit code is not an error of ``WasmEngine.run``: it returns a RunResult.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from naosd.errors import ConfigError, InvalidRequest, NaosError

if TYPE_CHECKING:
    from actors.wasm.engine import RunResult


class WasmError(NaosError):
    code: ClassVar[str] = "wasm_error"


class WasmInvalidModule(WasmError, InvalidRequest):
    code, exit_code = "wasm_invalid_module", 2


class WasmModuleTooLarge(WasmInvalidModule):
    code = "wasm_module_too_large"


class WasmModuleTooComplex(WasmModuleTooLarge):
    """More functions than ``Limits.functions``: refused before compiling."""

    code = "wasm_module_too_complex"


class WasmImportDenied(WasmInvalidModule):
    code = "wasm_import_denied"


class WasmInputTooLarge(WasmError, InvalidRequest):
    code, exit_code = "wasm_input_too_large", 2


class WasmCacheUnsafe(WasmError, ConfigError):
    code, exit_code = "wasm_cache_unsafe", 6


class WasmCompileTimeout(WasmError, TimeoutError):
    """Compiling took longer than ``Limits.compile_timeout_ms``. The compile is
    abandoned, not stopped: the process that ran it must be replaced."""

    code = "wasm_compile_timeout"


class WasmRunError(WasmError):
    """The guest started and was stopped. ``result`` carries the partial stdout and
    stderr, the fuel charged and its cost (None only when rebuilt from the wire)."""

    code = "wasm_run_error"

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.result))


class WasmOutOfFuel(WasmRunError):
    code = "wasm_out_of_fuel"


class WasmTimeout(WasmRunError, TimeoutError):
    code = "wasm_timeout"


class WasmMemoryLimit(WasmRunError):
    code = "wasm_memory_limit"


class WasmOutputTooLarge(WasmRunError):
    code = "wasm_output_too_large"


class WasmTrap(WasmRunError):
    code = "wasm_trap"

    def __init__(self, message: str, result: RunResult | None = None,
                 trap_code: str | None = None) -> None:
        super().__init__(message, result)
        self.trap_code = trap_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.result, self.trap_code))


class WasmExit(WasmRunError):
    code = "wasm_exit"
