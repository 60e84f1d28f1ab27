"""What this kernel offers for confining agent code, and what it lacks.

``probe()`` asks the kernel directly: the Landlock ABI version
(``landlock_create_ruleset(NULL, 0, VERSION)``), whether seccomp filters
can kill and return errors, whether ``no_new_privs`` exists, and whether a
throwaway child can enter new user and network namespaces. ``Support``
says which mechanisms "full" confinement needs and are missing (creating a
fully confined agent must be refused), which optional layers are absent
(confinement still holds, through a fallback), and renders a summary for
``naosctl status``. On any platform but Linux x86_64/aarch64 nothing is
available."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

from naosd.runtime.confine import kernel, landlock, seccomp

# Run in a throwaway interpreter: a user namespace needs a single-threaded
# caller, and the probing process (naosd) has threads.
_NAMESPACE_PROBE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
user = libc.unshare(0x10000000) == 0
net = user and libc.unshare(0x40000000) == 0
print(int(user), int(net))
"""
_RLIMITS = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_CORE", "RLIMIT_NPROC")


@dataclass(frozen=True, slots=True)
class Support:
    platform: str  # e.g. "linux x86_64"
    arch: str | None  # None: naos cannot confine on this platform
    landlock_abi: int  # 0: no Landlock
    seccomp_filter: bool
    no_new_privs: bool
    user_ns: bool
    net_ns: bool
    rlimits: tuple[str, ...]

    def missing(self) -> tuple[str, ...]:
        """Mechanisms "full" confinement needs that are absent (empty: usable)."""
        if self.arch is None:
            return (f"platform ({self.platform}): confinement needs Linux on x86_64 or "
                    "aarch64",)
        needs = [("Landlock", self.landlock_abi >= 1), ("seccomp filters", self.seccomp_filter),
                 ("no_new_privs", self.no_new_privs)]
        return tuple(name for name, present in needs if not present)

    def weaker(self) -> tuple[str, ...]:
        """Optional layers that are absent, and what stands in for each."""
        notes = []
        if 1 <= self.landlock_abi < 4:
            notes.append("Landlock ABI < 4: no TCP rules (seccomp still refuses sockets "
                         "without the net grant)")
        if 1 <= self.landlock_abi < 6:
            notes.append("Landlock ABI < 6: no signal or abstract-socket scoping (seccomp "
                         "limits signals to the handler itself and refuses Unix sockets)")
        if not self.user_ns:
            notes.append("no user namespaces: capabilities are still dropped; processes > 0 "
                         "is not capped by count")
        if not self.net_ns:
            notes.append("no network namespaces: without the net grant, seccomp and Landlock "
                         "alone refuse sockets")
        return tuple(notes)

    def summary(self) -> list[str]:
        """Human lines for ``naosctl status``."""
        missing = self.missing()
        head = ("agent confinement: full available" if not missing else
                "agent confinement: full UNAVAILABLE (missing: " + ", ".join(missing)
                + "); Python agents need confinement = \"none\"")
        lines = [f"{head} [{self.platform}]"]
        if self.arch is not None:
            spaces = [n for n, ok in (("user", self.user_ns), ("network", self.net_ns)) if ok]
            lines += [
                f"  landlock: {f'ABI {self.landlock_abi}' if self.landlock_abi else 'no'}",
                f"  seccomp filters: {_yes(self.seccomp_filter)}",
                f"  no_new_privs: {_yes(self.no_new_privs)}",
                f"  namespaces: {' + '.join(spaces) or 'none'}",
                f"  rlimits: {', '.join(r.removeprefix('RLIMIT_') for r in self.rlimits)}"]
        lines += [f"  weaker: {note}" for note in self.weaker()]
        return lines

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body.update(missing=list(self.missing()), weaker=list(self.weaker()),
                    rlimits=list(self.rlimits))
        return body


@functools.cache
def probe() -> Support:
    """What this machine offers (probed once per process: ~20 ms, one child)."""
    platform = f"{sys.platform} {os.uname().machine}"
    rlimits = tuple(r for r in _RLIMITS if hasattr(resource, r))
    if kernel.ARCH is None:
        return Support(platform, None, 0, False, False, False, False, rlimits)
    user, net = _namespaces()
    filters = (seccomp.action_available(seccomp.RET_KILL_PROCESS)
               and seccomp.action_available(seccomp.RET_ERRNO))
    return Support(platform, kernel.ARCH, landlock.abi_version(), filters, _no_new_privs(),
                   user, net, rlimits)


def _no_new_privs() -> bool:
    try:
        kernel.prctl(kernel.PR_GET_NO_NEW_PRIVS)
    except OSError:
        return False
    return True


def _namespaces() -> tuple[bool, bool]:
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _NAMESPACE_PROBE], env={},
                              capture_output=True, text=True, timeout=30, check=False)
        user, net = (bool(int(x)) for x in done.stdout.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return False, False
    return user, net


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
