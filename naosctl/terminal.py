"""naosctl's standard streams, when they are terminals, show control
characters instead of obeying them (the last guard: renderers already escape
what agents and guests wrote).  Newlines and tabs pass; JSON output is
unchanged, as ``render.to_json`` leaves no raw control character in it."""

from __future__ import annotations

import io
import sys
from typing import Any

from naosctl.render import printable


class TerminalText(io.TextIOWrapper):
    """A text stream whose writes go through :func:`printable` (lines kept)."""

    def write(self, text: Any) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        super().write(printable(text, lines=True))
        return len(text)


def guard(stream: io.TextIOWrapper) -> io.TextIOWrapper:
    """``stream`` itself unless it is a terminal; then the same file through
    a TerminalText."""
    if not stream.isatty():
        return stream
    stream.flush()
    return TerminalText(stream.buffer, encoding=stream.encoding, errors=stream.errors,
                        line_buffering=True)


def guard_standard_streams() -> None:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout = guard(sys.stdout)
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr = guard(sys.stderr)
