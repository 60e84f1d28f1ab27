"""Reading a module from a file without trusting its size."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from actors.wasm.limits import MAX_MODULE_BYTES
from naosd.errors import WasmInvalidModule, WasmModuleTooLarge


def read_module(path: Path, max_bytes: int = MAX_MODULE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Raises WasmModuleTooLarge past ``max_bytes`` (nothing more is read) and
    WasmInvalidModule when it cannot be opened or is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise WasmInvalidModule(f"cannot open module {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise WasmInvalidModule(f"module {path} is not a regular file")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise WasmModuleTooLarge(f"module {path} is larger than {max_bytes} bytes")
    return data
