"""SQL for the MCP servers naos is a client of (part of the storage layer: it
goes through :class:`naosd.storage.store.Store`).

A registration and its audit row are one transaction; the audit row holds the
definition's public view (:meth:`ServerDef.public`): never an env value, and no
token at all (only where naosd reads it from).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from actors.domain.tool_servers import ServerDef, server_def
from naosd.errors import Conflict, NotFound
from naosd.storage.store import Store

log = logging.getLogger("naosd.tools")


def list_servers(store: Store) -> list[ServerDef]:
    """Every registered server, by name; one whose stored definition no longer
    passes the rules (edited by hand, or a newer naos's) is left out, logged."""
    rows = store.query("SELECT name, definition FROM tool_servers ORDER BY name")
    out = []
    for name, text in rows:
        try:
            out.append(server_def(json.loads(text)))
        except (ValueError, TypeError) as exc:  # InvalidRequest is a ValueError
            log.error("tool server %r is not started: its stored definition is unreadable "
                      "(%s); naosctl mcp remove %s, then add it again", name, exc, name)
    return out


def add_server(store: Store, definition: ServerDef) -> ServerDef:
    """Insert ``definition`` (stamped with the time) and its audit row.

    Raises:
        Conflict: a server of that name is registered.
    """
    with store.transaction() as tx:
        if tx.execute("SELECT 1 FROM tool_servers WHERE name = ?", (definition.name,)):
            raise Conflict(f"tool server {definition.name!r} is already registered; "
                           f"remove it first (naosctl mcp remove {definition.name})")
        stamped = replace(definition, created_at=store.now_iso())
        tx.execute("INSERT INTO tool_servers(name, definition, created_at) VALUES (?, ?, ?)",
                   (stamped.name, json.dumps(stamped.to_json(), sort_keys=True),
                    stamped.created_at))
        tx.audit("toolserver.add", actor="mcp", detail=stamped.public())
    return stamped


def remove_server(store: Store, name: str) -> None:
    """Delete a registration with its audit row.

    Raises:
        NotFound: no server of that name.
    """
    with store.transaction() as tx:
        if not tx.execute("SELECT 1 FROM tool_servers WHERE name = ?", (name,)):
            raise NotFound(f"no tool server named {name!r}")
        tx.execute("DELETE FROM tool_servers WHERE name = ?", (name,))
        tx.audit("toolserver.remove", actor="mcp", detail={"name": name})
