"""The MCP client's registry in SQLite (naosd.storage.tool_servers), on a real
store: one transaction per change with its audit row, never an env value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.domain.tool_servers import server_def
from naosd.errors import Conflict, NotFound
from naosd.storage import tool_servers as sql
from naosd.storage.store import Store

CALC = server_def({"name": "calc", "transport": "stdio", "command": ["/bin/cat"], "cwd": "/",
                   "env": ["API_KEY=s3cret-77"], "price_micro": 5})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "naos.db", checkpoint_path=tmp_path / "audit.head") as s:
        yield s


def test_a_server_is_added_listed_and_removed_with_audit_rows(store: Store) -> None:
    added = sql.add_server(store, CALC)
    assert added.created_at and sql.list_servers(store) == [added]
    with pytest.raises(Conflict, match="already registered"):
        sql.add_server(store, CALC)
    sql.remove_server(store, "calc")
    assert sql.list_servers(store) == []
    with pytest.raises(NotFound):
        sql.remove_server(store, "calc")
    rows = store.audit_tail(10)
    assert [r.type for r in rows][-2:] == ["toolserver.add", "toolserver.remove"]
    assert rows[-2].detail["env"] == ["API_KEY"]
    assert "s3cret-77" not in json.dumps([r.detail for r in rows])
    assert store.verify_audit().ok


def test_a_stored_definition_that_no_longer_passes_is_skipped(store: Store,
                                                               caplog) -> None:
    sql.add_server(store, CALC)
    with store.transaction() as tx:
        tx.execute("INSERT INTO tool_servers(name, definition, created_at) VALUES (?, ?, ?)",
                   ("bad", json.dumps({"name": "bad.name", "transport": "stdio"}), "now"))
    assert [d.name for d in sql.list_servers(store)] == ["calc"]
    assert "'bad' is not started" in caplog.text
