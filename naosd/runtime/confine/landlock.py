"""Landlock: the filesystem, TCP and IPC-scope layer of a confined handler.

``plan`` (pure) turns a ``Confinement`` and the kernel's ABI version into a
ruleset: every filesystem right the ABI knows is handled (denied unless a rule
allows it); read paths get read and execute, write paths read and write but
neither execute nor device nodes. From ABI 4 TCP bind is refused, and TCP
connect too unless the "net" grant allows it; from ABI 6 abstract Unix
sockets and signals are scoped to the handler's own domain. ``restrict``
applies a plan to the calling process (raw ``syscall`` 444-446, the same
numbers on x86_64 and aarch64). ABIs above the newest known here (7) are
used with ABI 7's rights: the kernel accepts a subset of what it knows."""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from dataclasses import dataclass
from typing import Final

from naosd.runtime.confine import kernel
from naosd.runtime.confine.errors import ConfinementFailed
from naosd.runtime.confine.policy import PROC_SELF, Confinement

CREATE_RULESET_VERSION: Final = 1
RULE_PATH_BENEATH: Final = 1

FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
FS_MAKE_CHAR: Final = 1 << 6
FS_MAKE_BLOCK: Final = 1 << 11
FS_REFER: Final = 1 << 13  # ABI 2
FS_TRUNCATE: Final = 1 << 14  # ABI 3
FS_IOCTL_DEV: Final = 1 << 15  # ABI 5
NET_BIND_TCP: Final = 1 << 0  # ABI 4
NET_CONNECT_TCP: Final = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
SCOPE_SIGNAL: Final = 1 << 1

FS_ABI1: Final = (1 << 13) - 1  # execute .. make_sym
FILE_RIGHTS: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS: Final = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
NOT_WRITABLE: Final = FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_IOCTL_DEV
NEWEST_KNOWN_ABI: Final = 7


def fs_rights(abi: int) -> int:
    """Every filesystem right Landlock ABI ``abi`` can handle."""
    rights = FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


@dataclass(frozen=True, slots=True)
class Plan:
    """A ruleset to apply: handled rights and (path, allowed rights) rules."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    rules: tuple[tuple[str, int], ...]
    required: frozenset[str]  # rule paths that must exist (the write paths)

    def ruleset_attr(self) -> bytes:
        """``struct landlock_ruleset_attr`` (its newer fields zero on older ABIs)."""
        return struct.pack("=QQQ", self.handled_fs, self.handled_net, self.scoped)


def plan(conf: Confinement, abi: int) -> Plan:
    """The ruleset for ``conf`` on a kernel with Landlock ABI ``abi`` (>= 1)."""
    if abi < 1:
        raise ValueError("Landlock is not available (ABI 0)")
    handled = fs_rights(min(abi, NEWEST_KNOWN_ABI))
    read = tuple((p, READ_RIGHTS & handled) for p in conf.read_paths)
    write = tuple((p, handled & ~NOT_WRITABLE) for p in conf.write_paths)
    # "net" grants outbound connections; no handler listens on a TCP port
    # (it could take over a freed actor port on loopback and read its frames).
    net = (NET_BIND_TCP | (0 if conf.net else NET_CONNECT_TCP)) if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return Plan(abi, handled, net, scoped, read + write, frozenset(conf.write_paths))


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is off)."""
    if kernel.ARCH is None:
        return 0
    try:
        return kernel.syscall("landlock_create_ruleset", None, 0, CREATE_RULESET_VERSION)
    except OSError:
        return 0


def restrict(conf: Confinement, abi: int) -> Plan:
    """Confine the calling process (and every thread and child it creates
    afterwards) to ``plan(conf, abi)``. Sets ``no_new_privs`` first, as the
    kernel requires. Read paths that do not exist are skipped; a missing write
    path raises ConfinementFailed, as does any refusal by the kernel."""
    ruleset = plan(conf, abi)
    attr = ctypes.create_string_buffer(ruleset.ruleset_attr())
    try:
        fd = kernel.syscall("landlock_create_ruleset", attr, len(attr.raw), 0)
    except OSError as exc:
        raise ConfinementFailed(f"landlock_create_ruleset: {exc.strerror}") from exc
    try:
        for path, access in ruleset.rules:
            _add_rule(fd, path, access, required=path in ruleset.required)
        kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
        kernel.syscall("landlock_restrict_self", fd, 0)
    except OSError as exc:
        raise ConfinementFailed(f"landlock: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return ruleset


def _add_rule(ruleset_fd: int, path: str, access: int, *, required: bool) -> None:
    try:
        # /proc/self resolves here, in the child, to its own /proc/<pid>.
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if required:
            raise ConfinementFailed(f"landlock: {path} does not exist") from exc
        return
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= FILE_RIGHTS
        if path == PROC_SELF:
            access &= ~FS_EXECUTE
        attr = ctypes.create_string_buffer(struct.pack("=Qi", access, target))
        kernel.syscall("landlock_add_rule", ruleset_fd, RULE_PATH_BENEATH, attr, 0)
    except OSError as exc:
        raise ConfinementFailed(f"landlock rule for {path}: {exc.strerror}") from exc
    finally:
        os.close(target)
