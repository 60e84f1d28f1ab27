"""``python -m naosd.broker.llm.launcher ARGS``: llama-cpp-python's
OpenAI-compatible server (the arguments of ``python -m llama_cpp.server``)
with llama.cpp's *extra buffer types* turned off for every model it loads.

Why: a llama-cpp-python built natively on a Xeon with AMX (``amx_tile``,
``amx_int8``, ``amx_bf16``) died with SIGSEGV in ``ggml_backend_amx_mul_mat`` on
its first completion (0.3.36; ``Llama(...).create_chat_completion`` alone
reproduced it).  AMX is one of llama.cpp's extra buffer types, and
``llama_model_params.use_extra_bufts = False`` (llama.cpp's ``--no-repack``)
keeps every weight in a plain CPU buffer whatever flags the library was built
with, so the extra is safe however it was installed.  CPU_REPACK, the other
extra buffer type, goes too: it only repacks Q4_0/IQ4_NL/Q8_0 weights for
speed, and SmolLM2's Q4_1 weights were never repacked (llama.cpp's load log
says so).

How, and why this way: ``Llama(...)`` has no argument for the field.  Every
model load in llama-cpp-python reaches llama.cpp through one ctypes binding,
``llama_cpp.llama_cpp.llama_model_load_from_file(path, params)``, which
``llama_cpp._internals.LlamaModel`` calls through the module attribute.
Wrapping that binding sets the field on exactly the struct llama.cpp
receives, whatever ``Llama.__init__`` did to it before.  Wrapping
``llama_model_default_params`` instead would rely on ``Llama`` never setting
the field itself afterwards; a ``Llama`` subclass would have to copy its
300-line constructor.  And the wrapper cannot be bypassed silently: the
launcher refuses to start when the struct has no such field (another
llama-cpp-python) and refuses to serve a model that was loaded without
passing through the wrapper (a future version calling the binding by another
path).

This is a program of its own (its ``main`` is a composition root): it reads
and cleans its environment, and imports nothing of naosd but this file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, cast

FIELD = "use_extra_bufts"
# llama_cpp.server reads these from the environment as well as its settings:
# HOST/PORT would move the listener off 127.0.0.1, API_KEY would lock naosd out.
_ENV_OVERRIDES = ("config_file", "host", "port")


class Guard:
    """Wraps the model-load binding of ``native`` (``llama_cpp.llama_cpp``)."""

    def __init__(self, native: Any) -> None:
        fields = {name for name, *_ in native.llama_model_params._fields_}
        if FIELD not in fields:
            raise SystemExit(f"naos launcher: this llama-cpp-python has no "
                             f"llama_model_params.{FIELD}; cannot turn llama.cpp's extra "
                             f"buffer types (AMX, CPU_REPACK) off, refusing to serve")
        self.loads = 0
        self._load: Callable[..., Any] = native.llama_model_load_from_file
        native.llama_model_load_from_file = self.load

    def load(self, path: bytes, params: Any) -> Any:
        params.use_extra_bufts = False
        self.loads += 1
        sys.stderr.write(f"naos launcher: loading {path.decode(errors='replace')} "
                         f"with {FIELD}=false\n")
        sys.stderr.flush()
        return self._load(path, params)


def clean_environment(settings_fields: set[str]) -> None:
    """Drop what llama_cpp.server would read from the environment, and naosd's
    own settings (its keys among them): the server gets only its arguments."""
    names = settings_fields | set(_ENV_OVERRIDES)
    for key in list(os.environ):
        if key.lower() in names or key.startswith("NAOS_"):
            del os.environ[key]


def main(argv: list[str] | None = None) -> None:
    from llama_cpp import llama_cpp as native

    guard = Guard(native)
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    clean_environment(set(Settings.model_fields))
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args

    parser = argparse.ArgumentParser(prog="python -m naosd.broker.llm.launcher")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    # parse_model_from_args returns an instance; llama-cpp-python annotates it as the class.
    server = cast(ServerSettings, parse_model_from_args(ServerSettings, args))
    model = cast(ModelSettings, parse_model_from_args(ModelSettings, args))
    app = create_app(server_settings=server, model_settings=[model])
    if guard.loads == 0:  # create_app loads the default model
        raise SystemExit("naos launcher: the model was loaded without passing through "
                         f"the {FIELD} guard; refusing to serve")
    uvicorn.run(app, host=server.host, port=server.port)


if __name__ == "__main__":
    main()
