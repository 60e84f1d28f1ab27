"""The dashboard's JSON API, Server-Sent Events and /metrics over real HTTP
against the real daemon (the browser tests come with the full dashboard)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from harness import Naosd
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e


def login(d: Naosd) -> tuple[str, str]:
    info = json.loads(d.ctl("dashboard", "--json", check=True).stdout)
    return info["url"], info["login_url"].split("token=", 1)[1]


def get(url: str, token: str | None) -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=15) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, body, ""


def test_json_api_needs_the_token_and_serves_agents_tree_audit(daemon: Naosd):
    url, token = login(daemon)
    daemon.ctl("create", "webby", "--template", "echo", check=True)
    for path in ("api/v1/agents", "api/v1/tree", "api/v1/audit", "metrics",
                 "api/v1/events"):
        assert get(url + path, None)[0] == 401, path
    status, body, _ = get(url + "api/v1/agents", token)
    agents = json.loads(body)
    assert status == 200 and [a["name"] for a in agents] == ["webby"]
    assert agents[0]["state"] == "running"
    detail = json.loads(get(url + "api/v1/agents/webby", token)[1])
    assert detail["pid"] == agents[0]["pid"]
    assert get(url + "api/v1/agents/nobody", token)[0] == 404
    tree = json.loads(get(url + "api/v1/tree", token)[1])
    assert tree["name"] == "root"
    rows = json.loads(get(url + "api/v1/audit?n=5&type=agent.created", token)[1])
    assert [r["agent"] for r in rows] == ["webby"]
    found = json.loads(get(url + "api/v1/audit?q=webby", token)[1])
    assert found and all("webby" in json.dumps(r) for r in found)
    assert get(url + "api/v1/audit?n=many", token)[0] == 400
    assert json.loads(get(url + "api/v1/audit/verify", token)[1])["ok"] is True


def test_metrics_parse_with_prometheus_client(daemon: Naosd):
    url, token = login(daemon)
    daemon.ctl("create", "metered", "--template", "echo", check=True)
    status, body, ctype = get(url + "metrics", token)
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert all(name.startswith("naos_") for name in families)
    running = [s for s in families["naos_agents"].samples if s.labels["state"] == "running"]
    assert running[0].value == 1
    assert families["naos_uptime_seconds"].samples[0].value > 0
    assert "naos_agent_restarts" in families
    daemon.ctl("cost", "set", "--global", "--budget", "$2/day", check=True)
    daemon.ctl("broker", "execute", "sha256 of: x", check=True)
    families = {f.name: f for f in text_string_to_metric_families(
        get(url + "metrics", token)[1].decode())}
    spent = families["naos_budget_spent_micro"].samples
    assert [(s.labels["scope"], s.value) for s in spent] == [("*", 1.0)]
    assert families["naos_budget_limit_micro"].samples[0].value == 2_000_000


def sse_lines(url: str, token: str, last_id: int | None, want: int) -> list[dict]:
    """Read ``want`` events from the SSE stream with a raw socket."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    sock.sendall((f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Authorization: Bearer {token}\r\n{extra}\r\n").encode())
    buf, events = b"", []
    try:
        while len(events) < want:
            chunk = sock.recv(65536)
            assert chunk, "stream closed"
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                              if ": " in line and not line.startswith(":"))
                if "data" in fields:
                    events.append({"id": int(fields["id"]), **json.loads(fields["data"])})
    finally:
        sock.close()
    return events


def test_sse_pushes_new_rows_and_resumes_from_last_event_id(daemon: Naosd):
    import threading

    url, token = login(daemon)
    got: list[list[dict]] = []
    reader = threading.Thread(target=lambda: got.append(sse_lines(url, token, None, 1)))
    reader.start()
    time.sleep(0.7)
    daemon.ctl("create", "streamed", "--template", "echo", "--no-start", check=True)
    reader.join(20)
    assert got and got[0][0]["type"] == "agent.created" and got[0][0]["agent"] == "streamed"
    first_id = got[0][0]["id"]
    daemon.ctl("reload", check=True)
    missed = sse_lines(url, token, first_id - 1, 2)
    assert [e["id"] for e in missed] == [first_id, first_id + 1]
    assert missed[1]["type"] == "config.reload"


def test_an_open_event_stream_does_not_hold_up_shutdown(daemon: Naosd):
    url, token = login(daemon)
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    try:
        sock.sendall((f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                      f"Authorization: Bearer {token}\r\n\r\n").encode())
        assert b"200" in sock.recv(4096).split(b"\r\n", 1)[0]
        started = time.monotonic()
        assert daemon.stop() == 0
        assert time.monotonic() - started < 15
    finally:
        sock.close()


def test_cost_view_serves_budgets_and_broker_stats(daemon: Naosd):
    url, token = login(daemon)
    assert get(url + "api/v1/cost", None)[0] == 401
    daemon.ctl("cost", "set", "ann", "--budget", "$1/day", check=True)
    daemon.ctl("axis", "register", "ann", "--t-score", "900", "--c-score", "950", check=True)
    daemon.ctl("broker", "execute", "sha256 of: x", "--agent", "ann", check=True)
    status, body, _ = get(url + "api/v1/cost", token)
    view = json.loads(body)
    assert status == 200
    assert [(b["scope"], b["spent_micro"]) for b in view["budgets"]] == [("ann", 1)]
    assert view["stats"]["tasks"] == 1 and view["stats"]["by_kind"]["skill"]["cost_micro"] == 1
    assert get(url + "api/v1/cost?since=never", token)[0] == 400
