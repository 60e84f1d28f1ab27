"""The audit head checkpoint: a file outside the database holding the last
audit row's seq and hash, so that deleting the *last* rows is detectable.

With an audit key the file also carries ``mac = HMAC-SHA256(key, ...)`` over
its seq and hash (:func:`naosd.storage.audit.sign`): someone who can write the
state dir but cannot read the key cannot write a checkpoint that verifies.

Several writer processes may race: the file only moves forward, under an
``flock``, and is replaced atomically.  It never moves forward past a
database that no longer matches it (that would erase the evidence of rows
deleted or edited since), and a writer never creates it nor replaces one it
cannot read: a missing or garbled file stays so until naosd's start check
or ``audit reanchor`` deals with it in the open (see ``Store``).

The key reaches every writer process the way the frame secret does: naosd
installs it (:func:`install_process_key`) before it forks the actor system.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from naosd.errors import CheckpointGarbled
from naosd.storage.audit import CHECKPOINT_LABEL, Checkpoint, sign

log = logging.getLogger("naosd.storage.store")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY: list[bytes] = []  # this process's audit key (inherited by forked actors)


def install_process_key(key: bytes | None) -> None:
    """Make ``key`` the audit key of every Store opened later in this process
    and in processes forked from it (None: no key)."""
    _KEY[:] = [key] if key is not None else []


def process_key() -> bytes | None:
    return _KEY[0] if _KEY else None


def _mac(key: bytes, head: Checkpoint) -> str:
    return sign(key, CHECKPOINT_LABEL, {"seq": head.seq, "hash": head.hash})


def encode_checkpoint(head: Checkpoint, key: bytes | None) -> bytes:
    """The file's content: one JSON line, signed when there is a key."""
    data: dict[str, object] = {"seq": head.seq, "hash": head.hash}
    if key is not None:
        data["mac"] = _mac(key, head)
    return (json.dumps(data, separators=(",", ":")) + "\n").encode("ascii")


def read_checkpoint(path: Path, key: bytes | None = None) -> Checkpoint | None:
    """Parse the checkpoint file at ``path``; None if it does not exist.

    With ``key``, the file must carry a MAC that verifies; without one, a MAC
    present is not checked.

    Raises:
        CheckpointGarbled: if the file cannot be read, does not hold one
            ``{"seq": N, "hash": "<64 hex>"[, "mac": "<64 hex>"]}`` JSON line,
            or (with ``key``) is unsigned or its MAC does not verify.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointGarbled(f"audit checkpoint {path} is unreadable: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CheckpointGarbled(f"audit checkpoint {path} is not JSON: {exc}") from exc
    seq, digest = (data.get("seq"), data.get("hash")) if isinstance(data, dict) else (None, None)
    if type(seq) is not int or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise CheckpointGarbled(f"audit checkpoint {path} is malformed: {text[:200]!r}")
    head = Checkpoint(seq, digest)
    if key is None:
        return head
    mac = data.get("mac")
    if not isinstance(mac, str):
        raise CheckpointGarbled(f"audit checkpoint {path} is not signed: it was not written "
                                "with this daemon's audit key")
    if not hmac.compare_digest(mac, _mac(key, head)):
        raise CheckpointGarbled(f"audit checkpoint {path} has a MAC that does not verify: "
                                "forged, or written with another audit key")
    return head


def read_unsigned(path: Path) -> Checkpoint | None:
    """The head of a well-formed checkpoint that carries no MAC (written by a
    naos without an audit key); None for anything else."""
    try:
        head = read_checkpoint(path)
        signed = "mac" in json.loads(path.read_text(encoding="utf-8"))
    except (CheckpointGarbled, OSError, ValueError):
        return None
    return None if signed else head


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers across processes with ``flock`` on ``<path>.lock``."""
    lock_fd = os.open(
        path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock_fd)  # also releases the flock


def advance_checkpoint(
    path: Path, head: Checkpoint, *, key: bytes | None = None,
    matches: Callable[[Checkpoint], bool] | None = None,
) -> bool:
    """Write ``head`` to ``path`` if the file holds an older head that the
    database still has (``matches``). Returns whether the file was written.

    Never creates the file and never replaces one it cannot read: those are
    logged as errors and left for ``audit verify`` to report.

    Raises:
        OSError: if the lock, temporary or target file cannot be written.
    """
    with _locked(path):
        try:
            current = read_checkpoint(path, key)
        except CheckpointGarbled as exc:
            log.error("%s; not overwritten (see naosctl audit verify)", exc)
            return False
        if current is None:
            log.error("audit checkpoint %s is missing; not recreated (see naosctl audit "
                      "verify)", path)
            return False
        if current.seq >= head.seq:
            return False
        if matches is not None and not matches(current):
            log.error(
                "audit checkpoint %s names row #%d (%s...) which the database no longer "
                "holds: rows were deleted or edited; keeping the checkpoint as evidence "
                "(see naosctl audit verify)", path, current.seq, current.hash[:12])
            return False
        _write_atomic(path, encode_checkpoint(head, key))
        return True


def create_checkpoint(path: Path, head: Checkpoint, *, key: bytes | None = None) -> bool:
    """Write ``head`` unless the file exists (any content). For a new chain."""
    with _locked(path):
        if path.exists():
            return False
        _write_atomic(path, encode_checkpoint(head, key), durable=True)
        return True


def replace_checkpoint(path: Path, head: Checkpoint, *, key: bytes | None = None) -> None:
    """Write ``head`` whatever the file holds: only after an audit row says why."""
    with _locked(path):
        _write_atomic(path, encode_checkpoint(head, key), durable=True)


def set_aside(path: Path, now: datetime | None = None) -> Path | None:
    """Rename the file at ``path`` to ``<name>.bad-<UTC time>`` (evidence kept);
    the new name, or None when there was no file."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.bad-{stamp}")
    with _locked(path):
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
    return target


def _write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file;
    ``durable``: also fsync the directory (a lost rename would read as missing)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # a stale tmp file may have other modes
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # Advancing needs no fsync of the directory: losing the rename to a power
    # cut only leaves the previous checkpoint, one that lags, which verifies.
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
