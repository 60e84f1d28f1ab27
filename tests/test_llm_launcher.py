"""naos's launcher for the local LLM server (naosd.broker.llm.launcher): every
model load goes to llama.cpp with use_extra_bufts=false, or nothing is served.
The launched server itself is checked in test_llm_e2e (its load log)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from naosd.broker.llm import launcher
from naosd.broker.llm.local import find_model, server_installed

LOCAL_MISSING = not server_installed() or find_model() is None


class Params(ctypes.Structure):
    _fields_ = [("vocab_only", ctypes.c_bool), ("use_extra_bufts", ctypes.c_bool)]


class OldParams(ctypes.Structure):
    _fields_ = [("vocab_only", ctypes.c_bool)]


class Native:
    """Stands in for the ctypes module ``llama_cpp.llama_cpp`` (not our code)."""

    def __init__(self, params: type[ctypes.Structure]) -> None:
        self.llama_model_params = params
        self.received: list[tuple[bytes, bool]] = []

    def llama_model_load_from_file(self, path: bytes, params: Params) -> str:
        self.received.append((path, params.use_extra_bufts))
        return "model"


def test_every_load_reaches_the_library_with_extra_buffer_types_off(capfd):
    native = Native(Params)
    guard = launcher.Guard(native)
    params = Params(vocab_only=False, use_extra_bufts=True)  # llama.cpp's default
    assert native.llama_model_load_from_file(b"/m.gguf", params) == "model"
    assert native.received == [(b"/m.gguf", False)] and guard.loads == 1
    assert "use_extra_bufts=false" in capfd.readouterr().err


def test_a_library_without_the_field_is_refused():
    with pytest.raises(SystemExit, match=r"no llama_model_params\.use_extra_bufts"):
        launcher.Guard(Native(OldParams))


def test_the_server_gets_none_of_its_settings_from_the_environment(monkeypatch):
    for key in ("HOST", "PORT", "API_KEY", "n_ctx", "CONFIG_FILE", "NAOS_LLM_API_KEY"):
        monkeypatch.setenv(key, "x")
    monkeypatch.setenv("PATH_TO_KEEP", "kept")
    launcher.clean_environment({"host", "port", "api_key", "n_ctx"})
    left = {k for k in ("HOST", "PORT", "API_KEY", "n_ctx", "CONFIG_FILE", "NAOS_LLM_API_KEY")
            if k in os.environ}
    assert left == set() and os.environ["PATH_TO_KEEP"] == "kept"


@pytest.mark.skipif(LOCAL_MISSING, reason="extra local-llm not installed")
def test_the_real_bindings_have_the_field_and_a_plain_load_uses_extra_buffer_types():
    """Positive control for test_llm_e2e's log check: without the launcher,
    llama.cpp's load log names an extra buffer type (CPU_REPACK here, AMX on a
    native build on an AMX CPU), so its absence there means something."""
    code = ("import sys, llama_cpp\n"
            "from llama_cpp import llama_cpp as native\n"
            "assert 'use_extra_bufts' in dict(native.llama_model_params._fields_)\n"
            "llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, verbose=True)\n")
    out = subprocess.run([sys.executable, "-c", code, str(find_model())], capture_output=True,
                         text=True, timeout=110, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPU_REPACK" in out.stderr or "AMX" in out.stderr, out.stderr[-2000:]
