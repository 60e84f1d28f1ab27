"""A handler's answer to a run, checked by naosd (pure).

The handler owns its process: whatever ``naos.host`` promises (at most
1,000 log lines of 8 KiB per run, lines of three strings, a number of
milliseconds) a hostile handler can skip by answering on the channel itself.
naosd checks the answer here, before any of it reaches the database: a
malformed answer fails its run with a ``ProtocolError`` naming what was
wrong, and the run is still audited. (Unchecked, a bad log line broke the
run's group commit: the run went unaudited and every other record of the
same batch failed with it.)
"""

from __future__ import annotations

import math
from typing import Any, Final

from naos.context import LOG_LINE_LIMIT, LOG_LINES_PER_RUN
from naosd.errors import ProtocolError

TS_LIMIT: Final = 64  # an ISO timestamp is 27 characters
LEVEL_LIMIT: Final = 16
REASON_LIMIT: Final = 2000  # a crash reason: naos.host sends the exception's last lines


def checked_logs(agent: str, logs: Any) -> list[tuple[str, str, str]]:
    """The run's log lines as ``(ts, level, text)``; ProtocolError if malformed."""
    if logs is None:
        return []
    if not isinstance(logs, list):
        raise _bad(agent, f"logs must be a list, not {type(logs).__name__}")
    if len(logs) > LOG_LINES_PER_RUN:
        raise _bad(agent, f"{len(logs)} log lines (at most {LOG_LINES_PER_RUN} a run)")
    lines = []
    for i, line in enumerate(logs):
        if not (isinstance(line, list | tuple) and len(line) == 3
                and all(isinstance(part, str) for part in line)):
            raise _bad(agent, f"logs[{i}] must be [time, level, text], three strings")
        ts, level, text = line
        if len(ts) > TS_LIMIT or len(level) > LEVEL_LIMIT or len(text) > LOG_LINE_LIMIT:
            raise _bad(agent, f"logs[{i}] is too long (time {TS_LIMIT}, level "
                              f"{LEVEL_LIMIT}, text {LOG_LINE_LIMIT} characters at most)")
        lines.append((ts, level, text))
    return lines


def checked_ms(agent: str, ms: Any) -> float:
    """The run's duration in milliseconds; ProtocolError unless a finite number >= 0."""
    if ms is None:
        return 0.0
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms) \
            or ms < 0:
        raise _bad(agent, f"ms must be a number of milliseconds, not {ms!r:.40}")
    return float(ms)


def checked_reason(crashed: Any) -> str:
    """A crash reason, as text of at most REASON_LIMIT characters ("" if none):
    it is shown to callers and operators, so a handler cannot make it huge."""
    if not crashed:
        return ""
    text = crashed if isinstance(crashed, str) else repr(crashed)
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT] + " [cut]"


def _bad(agent: str, what: str) -> ProtocolError:
    return ProtocolError(f"agent {agent!r} answered a run with a malformed answer: {what}")
