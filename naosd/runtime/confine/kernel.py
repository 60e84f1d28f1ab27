"""Raw Linux calls for the confinement layers (stdlib + ctypes only).

Owns the system call numbers of the two architectures naos confines
(x86_64 and aarch64, from the kernel's ``syscall_64.tbl`` and
``asm-generic/unistd.h``), the audit architecture tags seccomp checks, and one
``syscall``/``prctl`` wrapper that turns a -1 into ``OSError(errno)``. On any
other platform ``ARCH`` is None and nothing here may be called."""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from typing import Any, Final

AUDIT_ARCH: Final = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Shared by both tables: every call numbered 424 and above is common to all
# architectures.
_COMMON: Final = {
    "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "quotactl_fd": 443, "landlock_create_ruleset": 444,
    "landlock_add_rule": 445, "landlock_restrict_self": 446, "process_mrelease": 448,
    "fchmodat2": 452, "setxattrat": 463, "removexattrat": 466, "open_tree_attr": 467,
}

SYSCALLS: Final[dict[str, dict[str, int]]] = {
    "x86_64": _COMMON | {
        "socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "kill": 62,
        "chmod": 90, "fchmod": 91, "chown": 92, "fchown": 93, "lchown": 94, "ptrace": 101,
        "syslog": 103, "setpgid": 109, "setsid": 112, "capset": 126, "rt_sigqueueinfo": 129,
        "utime": 132, "uselib": 134,
        "personality": 135, "vhangup": 153, "pivot_root": 155, "prctl": 157, "chroot": 161,
        "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
        "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197,
        "lremovexattr": 198, "fremovexattr": 199, "tkill": 200, "lookup_dcookie": 212,
        "tgkill": 234, "utimes": 235, "kexec_load": 246, "add_key": 248, "request_key": 249,
        "keyctl": 250, "fchownat": 260, "futimesat": 261, "fchmodat": 268, "unshare": 272,
        "utimensat": 280, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "fanotify_init": 300,
        "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
        "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "seccomp": 317,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    },
    "aarch64": _COMMON | {
        "setxattr": 5, "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15,
        "fremovexattr": 16, "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41,
        "chroot": 51, "fchmod": 52, "fchmodat": 53, "fchownat": 54, "fchown": 55, "vhangup": 58,
        "quotactl": 60, "utimensat": 88, "acct": 89, "capset": 91, "personality": 92,
        "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106, "syslog": 116,
        "ptrace": 117, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
        "reboot": 142, "setpgid": 154, "setsid": 157, "prctl": 167, "socket": 198,
        "socketpair": 199, "add_key": 217,
        "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224, "swapoff": 225,
        "rt_tgsigqueueinfo": 240, "perf_event_open": 241, "fanotify_init": 262,
        "name_to_handle_at": 264, "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "finit_module": 273, "seccomp": 277, "bpf": 280,
        "userfaultfd": 282, "kexec_file_load": 294,
    },
}

# prctl options
PR_SET_PDEATHSIG: Final = 1
PR_GET_DUMPABLE: Final = 3
PR_SET_DUMPABLE: Final = 4
PR_GET_SECCOMP: Final = 21
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4

# unshare / clone flags
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
CLONE_THREAD: Final = 0x00010000


def _arch() -> str | None:
    """The architecture naos can confine on, or None (other OS, other CPU,
    a 32-bit interpreter)."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        return None
    machine = os.uname().machine
    return machine if machine in SYSCALLS else None


ARCH: Final = _arch()


def _libc() -> Any:
    if ARCH is None:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a Linux without a dynamic libc
        return None


_LIBC: Final = _libc()


def nr(name: str) -> int:
    """The number of system call ``name`` on this machine; KeyError if unknown."""
    if ARCH is None:
        raise OSError(f"no system call table for {sys.platform} {os.uname().machine}")
    return SYSCALLS[ARCH][name]


def _arg(value: object) -> object:
    """A variadic argument as C sees it: ints are ``long`` (ctypes would pass
    a 32-bit int), pointers and ``None`` pass through."""
    return ctypes.c_long(value) if isinstance(value, int) else value


def syscall(name: str, *args: object) -> int:
    """``syscall(nr(name), *args)``; raises OSError with the kernel's errno."""
    if _LIBC is None:
        raise OSError(f"no libc to call {name}")
    fn = _LIBC.syscall
    fn.restype = ctypes.c_long
    ctypes.set_errno(0)
    result = int(fn(ctypes.c_long(nr(name)), *(_arg(a) for a in args)))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(option, ...)``; raises OSError with the kernel's errno."""
    return syscall("prctl", option, arg2, arg3, arg4, arg5)


def libc_call(name: str, *args: object) -> int:
    """A libc function returning int (``capset``, ``unshare``); OSError on -1."""
    if _LIBC is None:
        raise OSError(f"no libc to call {name}")
    result = int(getattr(_LIBC, name)(*args))
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return result
