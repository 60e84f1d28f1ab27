"""Seccomp: the system-call layer of a confined handler.

``build`` (pure) writes a classic BPF program for one architecture: a call
from a foreign architecture (or an x32 call on x86_64) kills the process.
EPERM answers the calls that reach into other processes, the kernel's
module, mount, key, namespace or io_uring machinery, and every change of file
metadata (mode, owner, times, extended attributes: Landlock does not cover
them). ``socket`` is refused for every family unless the "net" grant allows
IPv4 and IPv6 (never AF_UNIX: the control socket is a Unix path);
``socketpair`` is allowed for AF_UNIX only (it reaches nothing outside the
process, and asyncio needs it). With ``processes == 0`` fork, vfork and a
``clone`` without CLONE_THREAD are refused, so threads still work. ``clone3``
answers ENOSYS (its flags sit in memory a filter cannot read, so libc falls
back to ``clone``, which the filter inspects). When Landlock cannot scope
signals (ABI < 6), ``self_pid`` limits ``kill`` and friends to the handler's
own process, and no handler may disarm its parent-death signal.
``install`` loads a program into the calling process (all its
threads)."""

from __future__ import annotations

import ctypes
import errno
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from naosd.runtime.confine import kernel
from naosd.runtime.confine.errors import ConfinementFailed

Insn = tuple[int, int, int, int]  # (code, jt, jf, k): struct sock_filter

LD_W_ABS: Final = 0x20
JEQ_K: Final = 0x15
JGE_K: Final = 0x35
JSET_K: Final = 0x45
JA: Final = 0x05
RET_K: Final = 0x06
RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_ALLOW: Final = 0x7FFF0000
SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_GET_ACTION_AVAIL: Final = 2
SECCOMP_FILTER_FLAG_TSYNC: Final = 1
X32_SYSCALL_BIT: Final = 0x40000000
OFF_NR: Final = 0
OFF_ARCH: Final = 4
LEAF_RULES: Final = 4  # rules tested one by one at the bottom of the search
MAX_JUMP: Final = 255  # the reach of a conditional jump (8-bit offsets)

AF_UNIX: Final = 1
AF_INET: Final = 2
AF_INET6: Final = 10
NAMESPACE_FLAGS: Final = (kernel.CLONE_NEWNS | kernel.CLONE_NEWCGROUP | kernel.CLONE_NEWUTS
                          | kernel.CLONE_NEWIPC | kernel.CLONE_NEWUSER | kernel.CLONE_NEWPID
                          | kernel.CLONE_NEWNET)
PERSONALITY_QUERY: Final = 0xFFFFFFFF

# Refused with EPERM whatever the policy (names absent from an architecture's
# table, such as aarch64's missing iopl, are skipped).
DENIED: Final = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "process_madvise", "process_mrelease", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "mount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
    "open_tree", "open_tree_attr", "mount_setattr", "pivot_root", "chroot",
    "unshare", "setns", "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "lookup_dcookie",
    "uselib", "vhangup", "syslog", "iopl", "ioperm",
    # The handler leads its own session and process group, which its actor
    # kills as a whole: a child that left the group would outlive its agent.
    "setsid", "setpgid",
    # File metadata: Landlock does not cover these, and the daemon's files
    # share the handler's uid, so a chmod would hand naosd's database or
    # token to every local user (fd variants too: the handler can open
    # naos's own code read-only, which the daemon's uid may own).
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat", "setxattr", "lsetxattr", "fsetxattr",
    "setxattrat", "removexattr", "lremovexattr", "fremovexattr", "removexattrat",
)
SIGNAL_CALLS: Final = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")


@dataclass(frozen=True, slots=True)
class Filter:
    arch: str
    program: tuple[Insn, ...]

    def pack(self) -> bytes:
        """The program as ``struct sock_filter[]``."""
        return b"".join(struct.pack("=HBBI", *insn) for insn in self.program)


def build(arch: str, *, net: bool, processes: int, self_pid: int | None = None) -> Filter:
    """The filter for a handler on ``arch`` ("x86_64" or "aarch64")."""
    table = kernel.SYSCALLS[arch]
    eperm = [_ret(RET_ERRNO | errno.EPERM)]
    rules = {table[name]: eperm for name in DENIED if name in table}
    rules[table["socket"]] = _arg_in(0, (AF_INET, AF_INET6) if net else ())
    rules[table["socketpair"]] = _arg_in(0, (AF_UNIX,))
    rules[table["personality"]] = _arg_in(0, (0, PERSONALITY_QUERY))
    # The handler may not disarm its parent-death signal and outlive naosd.
    rules[table["prctl"]] = _arg_in(0, (kernel.PR_SET_PDEATHSIG,), match=RET_ERRNO | errno.EPERM,
                                    otherwise=RET_ALLOW)
    rules[table["clone"]] = _clone_body(threads_only=processes == 0)
    rules[table["clone3"]] = [_ret(RET_ERRNO | errno.ENOSYS)]
    if processes == 0:
        rules |= {table[name]: eperm for name in ("fork", "vfork") if name in table}
    if self_pid is not None:
        rules |= _signals_to_self(table, self_pid)
    program: list[Insn] = [
        _load(OFF_ARCH), (JEQ_K, 1, 0, kernel.AUDIT_ARCH[arch]), _ret(RET_KILL_PROCESS),
        _load(OFF_NR)]
    if arch == "x86_64":
        program += [(JGE_K, 0, 1, X32_SYSCALL_BIT), _ret(RET_KILL_PROCESS)]
    return Filter(arch, tuple(program + _search(sorted(rules.items()))))


def install(fltr: Filter) -> None:
    """Set ``no_new_privs`` and load ``fltr`` into every thread of the calling
    process; ConfinementFailed if the kernel refuses."""
    packed = ctypes.create_string_buffer(fltr.pack())
    prog = _SockFprog(len(fltr.program), ctypes.addressof(packed))
    try:
        kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
        failed_thread = kernel.syscall("seccomp", SECCOMP_SET_MODE_FILTER,
                                       SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog))
    except OSError as exc:
        raise ConfinementFailed(f"seccomp: {exc.strerror}") from exc
    if failed_thread:
        raise ConfinementFailed(f"seccomp: thread {failed_thread} could not be synchronised")


def action_available(action: int) -> bool:
    """True if the kernel has seccomp filters and knows ``action``."""
    if kernel.ARCH is None:
        return False
    value = ctypes.c_uint32(action)
    try:
        kernel.syscall("seccomp", SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(value))
    except OSError:
        return False
    return True


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _load(offset: int) -> Insn:
    return (LD_W_ABS, 0, 0, offset)


def _ret(value: int) -> Insn:
    return (RET_K, 0, 0, value)


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` in ``seccomp_data``."""
    return 16 + 8 * index + (4 if sys.byteorder == "big" else 0)


def _search(rules: list[tuple[int, list[Insn]]]) -> list[Insn]:
    """A binary search on the call number (in the accumulator) over ``rules``
    (sorted by number): a call costs ~log2(len) comparisons, not one per rule.
    Each rule's body returns on every path; a call no rule names is allowed."""
    if len(rules) <= LEAF_RULES:
        out: list[Insn] = []
        for number, body in rules:
            out += [(JEQ_K, 0, len(body), number), *body]
        return [*out, _ret(RET_ALLOW)]
    middle = len(rules) // 2
    below, above = _search(rules[:middle]), _search(rules[middle:])
    if len(below) <= MAX_JUMP:
        return [(JGE_K, len(below), 0, rules[middle][0]), *below, *above]
    # A conditional jump reaches 255 instructions: go through a long jump.
    return [(JGE_K, 0, 1, rules[middle][0]), (JA, 0, 0, len(below)), *below, *above]


def _arg_in(index: int, values: Iterable[int], *, match: int = RET_ALLOW,
            otherwise: int = RET_ERRNO | errno.EPERM) -> list[Insn]:
    """``match`` when argument ``index`` (low 32 bits) is one of ``values``,
    else ``otherwise`` (by default: allow those values, EPERM the rest)."""
    checks = tuple(values)
    jumps = [(JEQ_K, len(checks) - i, 0, v) for i, v in enumerate(checks)]
    return [_load(_arg_low(index)), *jumps, _ret(otherwise), _ret(match)]


def _clone_body(*, threads_only: bool) -> list[Insn]:
    """No new namespaces ever; with ``threads_only`` nothing but threads."""
    if not threads_only:
        return [_load(_arg_low(0)), (JSET_K, 1, 0, NAMESPACE_FLAGS), _ret(RET_ALLOW),
                _ret(RET_ERRNO | errno.EPERM)]
    return [_load(_arg_low(0)), (JSET_K, 2, 0, NAMESPACE_FLAGS),
            (JSET_K, 0, 1, kernel.CLONE_THREAD), _ret(RET_ALLOW),
            _ret(RET_ERRNO | errno.EPERM)]


def _signals_to_self(table: dict[str, int], pid: int) -> dict[int, list[Insn]]:
    """Signals only to the calling process (its pid, or 0: its own group,
    which a new session makes the handler's alone)."""
    rules = {table[name]: _arg_in(0, (pid, 0) if name in ("kill", "rt_sigqueueinfo") else (pid,))
             for name in SIGNAL_CALLS}
    rules[table["pidfd_send_signal"]] = [_ret(RET_ERRNO | errno.EPERM)]
    return rules
