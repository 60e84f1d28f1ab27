"""What status and inspect say of confinement: the view (with a given kernel
support, no probe) and its rendering by naosctl. The live daemon's views are
checked in tests/test_hostile_agent_e2e.py."""

from __future__ import annotations

import os

from naosctl import render
from naosd.control.confinement_view import REMOTE_NOTE, agent_confinement, observed
from naosd.runtime.confine.support import Support

FULL = Support("linux x86_64", "x86_64", 7, True, True, True, True, ("RLIMIT_AS",))
BARE = Support("linux x86_64", "x86_64", 0, False, True, False, False, ())


def test_a_remote_agent_is_shown_unconfined():
    view = agent_confinement({"confinement": "full"}, remote=True, handler_pid=None,
                             support=FULL)
    assert view == {"mode": "remote-unconfined", "note": REMOTE_NOTE}
    text = "\n".join(render.confinement(view))
    assert "remote-unconfined" in text and "NOT confined" in text


def test_full_confinement_lists_layers_and_default_limits():
    view = agent_confinement({}, remote=False, handler_pid=None, support=FULL)
    assert view["mode"] == "full" and view["grants"] == []
    assert view["layers"] == {"landlock_abi": 7, "seccomp": True, "user_ns": True,
                              "net_ns": True}
    assert view["limits"]["processes"] == 0 and "observed" not in view
    text = "\n".join(render.confinement(view))
    assert "landlock ABI 7, seccomp, user+ipc namespaces, network namespace" in text
    assert "processes 0 (no process)" in text and "cpu_seconds none" in text


def test_the_net_grant_drops_the_network_namespace():
    view = agent_confinement({"grants": ["net"], "limits": {"memory_mb": 128}}, remote=False,
                             handler_pid=None, support=FULL)
    assert view["layers"]["net_ns"] is False and view["limits"]["memory_mb"] == 128


def test_a_kernel_without_the_mechanisms_says_full_is_unavailable():
    view = agent_confinement({}, remote=False, handler_pid=None, support=BARE)
    assert str(view["layers"]).startswith("unavailable:") and "Landlock" in view["layers"]
    none = agent_confinement({"confinement": "none"}, remote=False, handler_pid=None,
                             support=BARE)
    assert none["layers"]["seccomp"] is False


def test_observed_reads_the_kernels_view_of_a_process():
    me = observed(os.getpid())
    assert me["running"] and me["own_user_namespace"] is False
    assert me["seccomp"] in ("off", "filter", "strict")
    assert observed(2**22 + 12345) == {"pid": 2**22 + 12345, "running": False}
