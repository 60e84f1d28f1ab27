"""What ``status`` and ``agent.inspect`` say about agent confinement.

``support_view``: which mechanisms this kernel offers (``naosctl status``).
``agent_confinement``: one agent's confinement as its definition asks for it,
the kernel layers this machine gives it, and what the kernel reports of its
running handler process (``/proc/PID/status``: an observation from outside,
never the handler's own claim). A remote agent (placed on another node of a
cluster) runs in its actor there, unconfined: the view says so.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from typing import Any

from naosd.errors import ConfinementUnavailable
from naosd.runtime.confine.launch import layers_for
from naosd.runtime.confine.policy import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_OPEN_FILES,
    MIB,
    Confinement,
)
from naosd.runtime.confine.support import Support, probe

REMOTE_NOTE = ("runs on another node of the cluster, inside its agent actor: NOT confined "
               "(the legacy in-actor path; docs/security.md)")
SECCOMP_MODES = {"0": "off", "1": "strict", "2": "filter"}


def support_view() -> dict[str, Any]:
    """This kernel's confinement support, with the lines ``naosctl status`` prints."""
    support = probe()
    return {**support.to_dict(), "summary": support.summary()}


def agent_confinement(execution: dict[str, Any], *, remote: bool, handler_pid: int | None,
                      support: Support | None = None) -> dict[str, Any]:
    """The confinement view of an agent whose definition has ``execution``."""
    if remote:
        return {"mode": "remote-unconfined", "note": REMOTE_NOTE}
    mode = str(execution.get("confinement") or "full")
    grants = [str(g) for g in execution.get("grants") or ()]
    limits = dict(execution.get("limits") or {})
    view: dict[str, Any] = {
        "mode": mode, "grants": grants,
        "limits": {"memory_mb": limits.get("memory_mb", DEFAULT_MEMORY_BYTES // MIB),
                   "cpu_seconds": limits.get("cpu_seconds", 0),
                   "open_files": limits.get("open_files", DEFAULT_OPEN_FILES),
                   "processes": limits.get("processes", 0)},
        "layers": _layers(mode, "net" in grants, support or probe()),
    }
    if handler_pid:
        view["observed"] = observed(handler_pid)
    return view


def _layers(mode: str, net: bool, support: Support) -> dict[str, Any] | str:
    # layers_for reads only the mode and the net grant: the paths do not matter here
    shape = Confinement((), ("/",), (), "/", net=net, mode=mode)
    try:
        return asdict(layers_for(shape, support))
    except ConfinementUnavailable as exc:
        return f"unavailable: {exc.message}"


def observed(pid: int) -> dict[str, Any]:
    """What the kernel says of process ``pid``: no_new_privs, seccomp mode,
    effective capabilities, and whether it is in a user namespace of its own
    (None where /proc does not tell)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    user_ns: bool | None = None
    with contextlib.suppress(OSError):
        user_ns = os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    if not fields:
        return {"pid": pid, "running": False}
    return {"pid": pid, "running": True,
            "no_new_privs": fields.get("NoNewPrivs") == "1",
            "seccomp": SECCOMP_MODES.get(fields.get("Seccomp", ""), "unknown"),
            "capabilities": fields.get("CapEff", "unknown"),
            "own_user_namespace": user_ns}
