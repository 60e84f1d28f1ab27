"""docs/protocol.md cannot drift: its error table is the one error table, its
method table the live daemon's ``methods`` result, and the limits it states
are the code's."""

from __future__ import annotations

import json

import pytest
from doc_tables import DOC, errors_table, local_methods, methods_table, notes_of, section
from harness import Naosd

from naosctl.client import Client
from naosd import protocol, values
from naosd.config import SETTINGS_BY_KEY
from naosd.control import admission, refusals, server

DOC_TEXT = DOC.read_text()


def test_the_error_table_is_generated_from_the_one_table():
    assert section(DOC_TEXT, "errors") == errors_table(), "run: python tests/doc_tables.py"


@pytest.mark.parametrize("stated", [
    pytest.param(f"hello is accepted | {protocol.HELLO_MAX_FRAME} bytes |", id="pre-hello"),
    pytest.param(f"in one array or map | {protocol.MAX_CONTAINER_LEN:,} |", id="container"),
    pytest.param(f"element, key and value) | {protocol.MAX_VALUES:,} |", id="values"),
    pytest.param(f"most **{values.MAX_DEPTH}** levels deep", id="depth"),
    pytest.param(f"At most **{server.MAX_IN_FLIGHT}** requests", id="in-flight"),
    pytest.param(f"at most {protocol.MAX_REQUEST_TIMEOUT:g}", id="request-timeout"),
    pytest.param(f"for at most {server.LINGER_S:g} seconds and {server.LINGER_BYTES >> 20} MiB",
                 id="linger"),
    pytest.param(f"the last {admission.OWNER_SLOTS} are kept for naosd's own uid and root",
                 id="owner-slots"),
    pytest.param(f"`daemon.max_connections_per_uid` ({server.MAX_PER_UID})", id="per-uid"),
    pytest.param("`daemon.max_connections_per_uid` "
                 f"({SETTINGS_BY_KEY['daemon.max_connections_per_uid'].default})",
                 id="per-uid-setting"),
    pytest.param("`daemon.handshake_timeout` "
                 f"({SETTINGS_BY_KEY['daemon.handshake_timeout'].default:g} s)", id="handshake"),
    pytest.param(f"per {refusals.INTERVAL_S:g} seconds", id="refusal-interval"),
])
def test_the_limits_the_doc_states_are_the_codes(stated):
    assert stated in " ".join(DOC_TEXT.split())


def test_the_methods_result_is_json_too():
    """The dashboard serves it as /api/v1/methods (a bytes default broke it)."""
    assert json.loads(json.dumps(local_methods()))


@pytest.mark.e2e
def test_the_method_table_is_the_live_methods_result(daemon: Naosd):
    with Client(daemon.socket) as c:
        live = c.call("methods")
    notes = notes_of(DOC_TEXT)
    assert section(DOC_TEXT, "methods") == methods_table(live, notes), \
        "run: python tests/doc_tables.py"
    assert set(notes) == {m["name"] for m in live}
    assert all(text and text != "TODO" for text in notes.values())
