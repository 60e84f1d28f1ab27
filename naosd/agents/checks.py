"""Checks of an agent's handler that naosd can make without running it.

naosd holds secrets (the frame-MAC key, tokens), so it never imports agent
code: a Python handler is only *compiled* here, which finds syntax errors
(with file and line) and runs nothing. Import-time failures are found by a
probe in an agent process (``ProbeAgent``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from naosd.errors import InvalidRequest

MAX_SOURCE_BYTES: Final = 8 * 1024 * 1024  # a handler, not a data file


def check_python_source(path: str) -> None:
    """Raise InvalidRequest naming the file, line and message if the handler
    at ``path`` cannot be read or compiled (blocking: run it off the loop)."""
    file = Path(path)
    try:
        with file.open("rb") as f:
            source = f.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise InvalidRequest(f"handler file {path}: {exc.strerror or exc}") from None
    if len(source) > MAX_SOURCE_BYTES:
        raise InvalidRequest(f"handler file {path} is larger than {MAX_SOURCE_BYTES} bytes")
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{exc.filename or path}, line {exc.lineno}"
        raise InvalidRequest(f"{where}: {type(exc).__name__}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, deep nesting
        raise InvalidRequest(f"{path}: cannot compile: {type(exc).__name__}: {exc}") from None
