"""The audit key: the HMAC key that signs the audit head checkpoint and
exported heads. It lives outside the state dir (by default ``audit.key``
beside the config file, or ``audit.key_file``), is created 0600 on first start
and is never written to the database, the audit log or a log line.

What it protects against: someone who can write the state dir (database,
checkpoint) but cannot read this file cannot write a checkpoint that verifies,
so deleting the last rows and rewriting the checkpoint is detected. What it
does not: anyone who can read the key (the daemon's user, root) can sign; and
an older genuine checkpoint, copied earlier, can be put back together with a
log cut back to it. Only a head exported and kept elsewhere catches that.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from naosd.errors import ConfigError
from naosd.storage.audit import key_id

MIN_KEY_BYTES = 32
MAX_KEY_FILE = 4096


@dataclass(frozen=True, slots=True)
class AuditKey:
    """``created``: this start made the file (there was no key before)."""

    key: bytes = field(repr=False)
    path: Path
    created: bool

    @property
    def key_id(self) -> str:
        return key_id(self.key)


def load_or_create(path: Path) -> AuditKey:
    """The key in ``path``, created (64 hex digits, mode 0600) if absent.

    Raises:
        ConfigError: naming the file, when it cannot be created or read, is not
            a regular file, is writable by the group or open to others, belongs
            to another user (root aside), or holds fewer than 32 bytes.
    """
    try:
        return AuditKey(_read(path), path, created=False)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        if path.exists():  # another starter won the race: use its key
            return AuditKey(_read(path), path, created=False)
        raise _cannot_create(path, "a parent is not a directory") from None
    except OSError as exc:
        raise _cannot_create(path, exc.strerror or str(exc)) from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return AuditKey(_read(path), path, created=True)


def _cannot_create(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"audit.key_file: cannot create {path}: {why}; create it as the daemon's user "
        f"(e.g. `umask 077; head -c 32 /dev/urandom | od -An -vtx1 | tr -d '[:space:]' "
        f"> {path}`) or set audit.key_file")


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"audit.key_file: cannot open {path}: {exc.strerror}") from None
    try:
        _check_private(path, os.fstat(fd))
    except ConfigError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        try:
            key = fh.read(MAX_KEY_FILE + 1).strip()
        except OSError as exc:
            raise ConfigError(f"audit.key_file: cannot read {path}: {exc.strerror}") from None
    if len(key) > MAX_KEY_FILE:
        raise ConfigError(f"audit.key_file: {path} is larger than {MAX_KEY_FILE} bytes")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"audit.key_file: {path} holds {len(key)} bytes; at least "
                          f"{MIN_KEY_BYTES} are needed")
    return key


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"audit.key_file: {path} is not a regular file")
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(f"audit.key_file: {path} belongs to uid {info.st_uid}, not to the "
                          "daemon's user or root")
    if info.st_mode & 0o027:
        raise ConfigError(f"audit.key_file: {path} has mode {stat.S_IMODE(info.st_mode):04o}: "
                          "writable by its group or open to others; chmod 600 it")
