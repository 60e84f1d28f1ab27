"""The child's side: apply a confinement to the calling process.

A confined child is started as ``python -I -B -m MODULE SPEC ARGS...`` and
MODULE calls ``confine_from_argv(sys.argv[1:])`` (or ``apply(spec)``) first
thing, before it imports any agent code. SPEC is JSON: the confinement
(without its environment, which the child already has), the parent's pid, the
descriptors to keep, and the ``Layers`` the parent chose from its probe. The
child applies exactly those layers or exits with ``EXIT_CONFINEMENT_FAILED``.

Order, and why: die with the parent; close every descriptor not kept; set
rlimits; enter the user + IPC (and network) namespaces while still
single-threaded and before capabilities go (writing our uid map needs them);
cap tasks; drop capabilities; Landlock; seccomp last, because it refuses
``unshare`` and ``prctl(PR_SET_PDEATHSIG)``, which the steps before it make.
Any exception stops the bootstrap before agent code is imported."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from naosd.errors import InvalidRequest
from naosd.runtime.confine import kernel, landlock, process, seccomp
from naosd.runtime.confine.errors import (
    EXIT_CONFINEMENT_FAILED,
    ConfinementError,
    ConfinementFailed,
)
from naosd.runtime.confine.policy import Confinement, from_dict, to_dict

SIGNAL_SCOPE_ABI = 6  # Landlock scopes signals from this ABI on


@dataclass(frozen=True, slots=True)
class Layers:
    """The kernel mechanisms one child applies (all off: mode "none")."""

    landlock_abi: int = 0
    seccomp: bool = False
    user_ns: bool = False
    net_ns: bool = False

    @property
    def signals_by_seccomp(self) -> bool:
        """Landlock cannot scope signals here: the seccomp filter does it."""
        return self.seccomp and self.landlock_abi < SIGNAL_SCOPE_ABI


@dataclass(frozen=True, slots=True)
class Spec:
    """What the child's bootstrap needs (it travels as argv[1])."""

    confinement: Confinement
    parent: int
    keep_fds: tuple[int, ...]
    layers: Layers

    def encode(self) -> str:
        return json.dumps({"confinement": to_dict(self.confinement), "parent": self.parent,
                           "keep_fds": list(self.keep_fds), "layers": asdict(self.layers)},
                          separators=(",", ":"), sort_keys=True)


def decode(text: str) -> Spec:
    """The Spec in ``text``; InvalidRequest if it is not one."""
    try:
        body = json.loads(text)
        layers = Layers(**body["layers"])
        keep = tuple(int(fd) for fd in body["keep_fds"])
        return Spec(from_dict(body["confinement"]), int(body["parent"]), keep, layers)
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidRequest(f"malformed confinement spec: {exc!r}") from exc


def apply(spec: Spec) -> dict[str, Any]:
    """Confine the calling process as ``spec`` says; returns what was applied
    (for the agent actor to audit). Raises ConfinementError on any failure;
    the process must then exit without running agent code."""
    conf, layers = spec.confinement, spec.layers
    process.die_with_parent(spec.parent)
    _close_fds_except(spec.keep_fds)
    process.set_rlimits(conf)
    if layers.user_ns:
        process.enter_namespaces(net=layers.net_ns)
        if conf.processes:
            process.limit_tasks(conf.processes)
    if layers.seccomp or layers.landlock_abi:
        process.drop_capabilities()
    if layers.landlock_abi:
        landlock.restrict(conf, layers.landlock_abi)
    if layers.seccomp:
        if kernel.ARCH is None:
            raise ConfinementFailed("seccomp: no system call table for this platform")
        self_pid = os.getpid() if layers.signals_by_seccomp else None
        seccomp.install(seccomp.build(kernel.ARCH, net=conf.net, processes=conf.processes,
                                      self_pid=self_pid))
    return {"mode": conf.mode, **asdict(layers), "net": conf.net,
            "signals": "seccomp" if layers.signals_by_seccomp else
            ("landlock" if layers.landlock_abi else "none")}


def confine_from_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Apply the spec in ``argv[0]``; returns (what was applied, the rest of
    argv). On any failure, says why on stderr and exits the process with
    ``EXIT_CONFINEMENT_FAILED``: agent code never runs unconfined."""
    try:
        if not argv:
            raise InvalidRequest("no confinement spec in argv")
        applied = apply(decode(argv[0]))
    except (ConfinementError, InvalidRequest, OSError) as exc:
        sys.stderr.write(f"naos confinement failed: {exc}\n")
        sys.stderr.flush()
        os._exit(EXIT_CONFINEMENT_FAILED)
    return applied, argv[1:]


def _close_fds_except(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 but ``keep`` (the launcher's close_fds
    already did; this holds even for a child started some other way)."""
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _fd_ceiling())


def _fd_ceiling() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
