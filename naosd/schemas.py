"""Tool arguments against a JSON Schema (jsonschema, part of the ``mcp``
extra, imported on first use): the agents naos serves over MCP
(``naosd.mcp.gateway``) and the tools of the MCP servers naos calls
(``naosd.broker.tools``) check their arguments the same way.

Imports nothing of naosd but ``naosd.errors``.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any


def preload_jsonschema() -> None:
    """Import jsonschema now (its first import blocks ~0.1-0.3 s: call this off
    the event loop); a missing package is reported by :func:`check_arguments`."""
    with contextlib.suppress(ImportError):
        importlib.import_module("jsonschema.validators")


def check_arguments(arguments: dict[str, Any], schema: dict[str, Any], what: str) -> None:
    """Validate tool arguments against ``what``'s JSON Schema.

    Raises:
        InvalidRequest: they do not match (naming where and why), or the
            schema itself is not a valid JSON Schema.
        ConfigError: ``jsonschema`` (part of the ``mcp`` extra) is missing.
    """
    from naosd.errors import ConfigError, InvalidRequest

    try:  # untyped (no stubs): through importlib, so it is Any to the type checker
        exceptions = importlib.import_module("jsonschema.exceptions")
        validators = importlib.import_module("jsonschema.validators")
    except ImportError:
        raise ConfigError(f"{what} declares an input_schema; checking it needs the jsonschema "
                          "package: pip install 'naos[mcp]'") from None
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise InvalidRequest(f"{what}: its input_schema is not a valid JSON Schema: "
                             f"{exc.message}") from None
    error = exceptions.best_match(cls(schema).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the arguments)"
        raise InvalidRequest(f"arguments do not match {what}'s input_schema at {where}: "
                             f"{error.message}")
