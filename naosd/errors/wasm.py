"""Errors of the WASM sandbox (a leaf module: stdlib only), collected by
``naosd.errors``::

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

from typing import Any, ClassVar

from naosd.errors.core import ConfigError, InvalidRequest, NaosError


class WasmError(NaosError):
    """A WASM module or guest failed."""

    code: ClassVar[str] = "wasm_error"


class WasmInvalidModule(WasmError, InvalidRequest):
    """Not WebAssembly, fails validation, or not a WASI command (see docs/wasm-abi.md)."""

    code, exit_code = "wasm_invalid_module", 2


class WasmModuleTooLarge(WasmInvalidModule):
    """The module is larger than its limit."""

    code = "wasm_module_too_large"


class WasmModuleTooComplex(WasmModuleTooLarge):
    """More functions than ``Limits.functions``: refused before compiling."""

    code = "wasm_module_too_complex"


class WasmImportDenied(WasmInvalidModule):
    """The module imports a host function it was not granted."""

    code = "wasm_import_denied"


class WasmInputTooLarge(WasmError, InvalidRequest):
    """The guest's input is larger than its limit."""

    code, exit_code = "wasm_input_too_large", 2


class WasmCacheUnsafe(WasmError, ConfigError):
    """The compiled-module cache directory is not naosd's own, or not 0700."""

    code, exit_code = "wasm_cache_unsafe", 6


class WasmCompileTimeout(WasmError, TimeoutError):
    """Compiling took longer than ``Limits.compile_timeout_ms``. The compile is
    abandoned, not stopped: the process that ran it must be replaced."""

    code = "wasm_compile_timeout"


class WasmRunError(WasmError):
    """The guest started and was stopped by a limit or a trap.

    ``result`` (an ``actors.wasm.engine.RunResult``; typed Any: this leaf imports
    nothing of naos) carries the partial stdout and stderr, the fuel charged and
    its cost (None only when rebuilt from the wire)."""

    code = "wasm_run_error"

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.result))


class WasmOutOfFuel(WasmRunError):
    """The guest used up its fuel (instruction budget)."""

    code = "wasm_out_of_fuel"


class WasmTimeout(WasmRunError, TimeoutError):
    """The guest ran longer than its time limit."""

    code = "wasm_timeout"


class WasmMemoryLimit(WasmRunError):
    """The guest needed more memory than its limit."""

    code = "wasm_memory_limit"


class WasmOutputTooLarge(WasmRunError):
    """The guest's output passed its limit."""

    code = "wasm_output_too_large"


class WasmTrap(WasmRunError):
    """The guest trapped (unreachable, bad memory access, ...)."""

    code = "wasm_trap"

    def __init__(self, message: str, result: Any = None,
                 trap_code: str | None = None) -> None:
        super().__init__(message, result)
        self.trap_code = trap_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.result, self.trap_code))


class WasmExit(WasmRunError):
    """A WASM agent or skill exited with a non-zero code."""

    code = "wasm_exit"
