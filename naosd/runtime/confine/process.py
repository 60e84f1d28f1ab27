"""Process-level layers of a confined handler: parent-death signal, rlimits,
user, IPC and network namespaces, capabilities, and the dumpable flag.

Each function changes the calling process only; the bootstrap calls them in
the child, in order, before any agent code is imported. ``protect_parent`` is
the one meant for the agent actor's own process."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import threading

from naosd.runtime.confine import kernel
from naosd.runtime.confine.errors import ConfinementFailed
from naosd.runtime.confine.policy import Confinement

LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_CAPABILITY = 63  # PR_CAPBSET_DROP past the kernel's last one is EINVAL


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent thread exits; exit now if the
    parent already changed (it died before the signal was armed). Where
    naos cannot confine (``kernel.ARCH`` is None) there is no such signal:
    only the check is made."""
    if kernel.ARCH is not None:
        try:
            kernel.prctl(kernel.PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except OSError as exc:
            raise ConfinementFailed(f"PR_SET_PDEATHSIG: {exc.strerror}") from exc
    if os.getppid() != parent:
        os._exit(1)


def set_rlimits(conf: Confinement) -> None:
    """RLIMIT_CORE 0 always; RLIMIT_AS, RLIMIT_CPU (SIGXCPU at the limit,
    SIGKILL a second later) and RLIMIT_NOFILE from the policy."""
    limits = [(resource.RLIMIT_CORE, 0, 0)]
    if conf.memory_bytes:
        limits.append((resource.RLIMIT_AS, conf.memory_bytes, conf.memory_bytes))
    if conf.cpu_seconds:
        limits.append((resource.RLIMIT_CPU, conf.cpu_seconds, conf.cpu_seconds + 1))
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = conf.open_files if nofile_hard < 0 else min(conf.open_files, nofile_hard)
    limits.append((resource.RLIMIT_NOFILE, files, files))
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as exc:
            raise ConfinementFailed(f"setrlimit({which}, {soft}): {exc}") from exc


def enter_namespaces(*, net: bool) -> None:
    """Move into a new user namespace (mapping our own uid and gid, so file
    ownership reads the same) with its own IPC namespace (no System V IPC
    object or POSIX message queue of the daemon's uid is reachable) and, with
    ``net``, a new network namespace: no interface but a loopback that is
    down, and its own abstract Unix socket names. Must run while the process
    has one thread."""
    if threading.active_count() != 1:
        raise ConfinementFailed("namespaces must be entered before any thread starts")
    uid, gid = os.geteuid(), os.getegid()
    flags = kernel.CLONE_NEWUSER | kernel.CLONE_NEWIPC | (kernel.CLONE_NEWNET if net else 0)
    try:
        kernel.libc_call("unshare", ctypes.c_int(flags))
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:
        raise ConfinementFailed(f"user/network namespace: {exc}") from exc


def limit_tasks(processes: int) -> None:
    """RLIMIT_NPROC = ``processes`` (processes and threads). Only meaningful in
    the handler's own user namespace, where the kernel counts just its tasks;
    the kernel does not enforce it for uid 0."""
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    except (OSError, ValueError) as exc:
        raise ConfinementFailed(f"setrlimit(RLIMIT_NPROC, {processes}): {exc}") from exc


def drop_capabilities() -> None:
    """No capability left: bounding set (when we may change it), ambient,
    effective, permitted and inheritable sets all emptied."""
    for cap in range(MAX_CAPABILITY + 1):
        try:
            kernel.prctl(kernel.PR_CAPBSET_DROP, cap)
        except OSError:
            break  # EINVAL: past the last capability; EPERM: no CAP_SETPCAP (none to drop)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    try:
        kernel.prctl(kernel.PR_CAP_AMBIENT, kernel.PR_CAP_AMBIENT_CLEAR_ALL)
        kernel.syscall("capset", header, data)
    except OSError as exc:
        raise ConfinementFailed(f"dropping capabilities: {exc.strerror}") from exc


def protect_parent() -> bool:
    """Make the calling process non-dumpable: no core file, and its
    ``/proc/PID/mem``, ``environ`` and ``fd`` become root's, so another
    process of the same uid cannot read its secrets (the agent actor holds
    the frame-MAC key). A root process with CAP_SYS_PTRACE still can.
    Returns False where prctl is missing (not Linux)."""
    if kernel.ARCH is None:
        return False
    kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
    return kernel.prctl(kernel.PR_GET_DUMPABLE) == 0


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
