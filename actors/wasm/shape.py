"""What a module will cost to compile, read from its section headers (pure).

wasmtime compiles every defined function, and compile time grows with their
number: 500,000 empty functions (a 2 MB module) took 10-59 s here. Reading
the section headers (an id byte and a LEB128 size each) and the two vector
counts that give the function count takes microseconds, so a module over
``Limits.functions`` is refused before any compile starts. Everything else
about the module is left to wasmtime's validation.
"""

from __future__ import annotations

from dataclasses import dataclass

from naosd.errors import WasmInvalidModule, WasmModuleTooComplex

HEADER_SIZE = 8  # b"\0asm" + version
FUNCTION_SECTION = 3
CODE_SECTION = 10


@dataclass(frozen=True, slots=True)
class ModuleShape:
    """``functions``: the functions the module defines (the larger of its
    function and code section counts); ``code_bytes``: its code section's size."""

    functions: int
    code_bytes: int


def _u32(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 of at most 5 bytes at ``pos``: (value, next position)."""
    value = 0
    for i in range(5):
        if pos + i >= len(data):
            raise WasmInvalidModule(f"malformed module: truncated integer at offset {pos}")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise WasmInvalidModule(f"malformed module: integer too long at offset {pos}")


def module_shape(data: bytes) -> ModuleShape:
    """Walk the section headers of a module that starts with the wasm magic.

    Raises WasmInvalidModule for a section that runs past the end.
    """
    pos, functions, code_bytes = HEADER_SIZE, 0, 0
    while pos < len(data):
        section = data[pos]
        size, start = _u32(data, pos + 1)
        end = start + size
        if end > len(data):
            raise WasmInvalidModule(f"malformed module: section {section} at offset {pos} "
                                    f"claims {size} bytes, {len(data) - start} are left")
        if section in (FUNCTION_SECTION, CODE_SECTION) and size:
            count, _ = _u32(data[:end], start)
            functions = max(functions, count)
            if section == CODE_SECTION:
                code_bytes = size
        pos = end
    return ModuleShape(functions, code_bytes)


def check_shape(data: bytes, max_functions: int) -> ModuleShape:
    """The module's shape; WasmModuleTooComplex over ``max_functions``."""
    shape = module_shape(data)
    if shape.functions > max_functions:
        raise WasmModuleTooComplex(
            f"module defines {shape.functions} functions; the limit is {max_functions}")
    return shape
