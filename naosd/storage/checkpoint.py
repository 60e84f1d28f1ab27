"""The audit head checkpoint: a file outside the database holding the last
audit row's seq and hash, so that deleting the *last* rows is detectable.

Several writer processes may race: the file only moves forward, under an
``flock``, and is replaced atomically.  It never moves forward past a
database that no longer matches it: that would erase the evidence of rows
deleted or edited since."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from naosd.errors import AuditError
from naosd.storage.audit import Checkpoint

log = logging.getLogger("naosd.storage.store")

_HEX64 = re.compile(r"[0-9a-f]{64}")


def read_checkpoint(path: Path) -> Checkpoint | None:
    """Parse the checkpoint file at ``path``; None if it does not exist.

    Raises:
        AuditError: if the file cannot be read or does not hold one
            ``{"seq": N, "hash": "<64 hex>"}`` JSON line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"audit checkpoint {path} is unreadable: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AuditError(f"audit checkpoint {path} is not JSON: {exc}") from exc
    seq, digest = (data.get("seq"), data.get("hash")) if isinstance(data, dict) else (None, None)
    if type(seq) is not int or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise AuditError(f"audit checkpoint {path} is malformed: {text[:200]!r}")
    return Checkpoint(seq, digest)


def advance_checkpoint(
    path: Path, head: Checkpoint, *, matches: Callable[[Checkpoint], bool] | None = None
) -> bool:
    """Write ``head`` to ``path`` unless the file already holds a seq >= it,
    or ``matches(current)`` says the database no longer holds the row the
    file names (then the file is kept as evidence and an error is logged).

    Serialised across processes with ``flock`` on ``<path>.lock``. Returns
    whether the file was written. An unreadable file is overwritten (logged).

    Raises:
        OSError: if the lock, temporary or target file cannot be written.
    """
    lock_fd = os.open(
        path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            current = read_checkpoint(path)
        except AuditError as exc:
            log.warning("overwriting bad audit checkpoint: %s", exc)
            current = None
        if current is not None and current.seq >= head.seq:
            return False
        if current is not None and matches is not None and not matches(current):
            log.error(
                "audit checkpoint %s names row #%d (%s...) which the database no longer "
                "holds: rows were deleted or edited; keeping the checkpoint as evidence "
                "(see naosctl audit verify)", path, current.seq, current.hash[:12])
            return False
        line = json.dumps({"seq": head.seq, "hash": head.hash}, separators=(",", ":"))
        _write_atomic(path, (line + "\n").encode("ascii"))
        return True
    finally:
        os.close(lock_fd)  # also releases the flock


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # a stale tmp file may have other modes
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # No fsync of the directory: losing the rename to a power cut only leaves
    # the previous checkpoint, i.e. one that lags, which verification accepts.
    os.replace(tmp, path)
