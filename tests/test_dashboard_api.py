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
    assert all(name.startswith(("naos_", "process_", "python_")) for name in families)
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


def sse_lines(url: str, token: str, last_id: int | str | None, want: int,
              kind: str | None = None) -> list[dict]:
    """Read ``want`` events from the SSE stream with a raw socket: each is its
    data plus ``event`` (kind), ``cursor`` (the raw id) and ``id`` (its audit
    seq part); with ``kind``, only events of that kind count towards ``want``."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    extra = f"Last-Event-ID: {last_id}\r\n" if last_id is not None else ""
    sock.sendall((f"GET /api/v1/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Authorization: Bearer {token}\r\n{extra}\r\n").encode())
    buf, events = b"", []
    try:
        while len([e for e in events if kind in (None, e["event"])]) < want:
            chunk = sock.recv(65536)
            assert chunk, "stream closed"
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                              if ": " in line and not line.startswith(":"))
                if "data" in fields:
                    seq, _, _ = fields["id"].partition(".")
                    events.append({**json.loads(fields["data"]), "event": fields["event"],
                                   "cursor": fields["id"], "seq_cursor": int(seq)})
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
    first_id = got[0][0]["seq"]
    assert got[0][0]["seq_cursor"] == first_id
    daemon.ctl("reload", check=True)
    missed = sse_lines(url, token, first_id - 1, 2)
    assert [e["seq"] for e in missed] == [first_id, first_id + 1]
    assert missed[1]["type"] == "config.reload"


LOGGER = """
def handle(message, ctx):
    ctx.log("line", message)
    return message
"""


def test_sse_streams_log_lines_and_resumes_both_cursors(daemon: Naosd, tmp_path):
    import threading

    handler = tmp_path / "logger.py"
    handler.write_text(LOGGER)
    daemon.ctl("create", "talker", "--source", str(handler), check=True)
    url, token = login(daemon)
    got: list[list[dict]] = []
    reader = threading.Thread(target=lambda: got.append(sse_lines(url, token, None, 2)))
    reader.start()
    time.sleep(0.7)
    daemon.ctl("run", "talker", "--input", '"first"', check=True)
    reader.join(20)
    assert got, "no events arrived"
    kinds = {e["event"]: e for e in got[0]}
    assert set(kinds) == {"audit", "log"}, got[0]
    line = kinds["log"]
    assert line["agent"] == "talker" and "first" in line["text"]
    # reconnect from just before that line: it comes again, and only it
    seq, _, lid = line["cursor"].partition(".")
    daemon.ctl("run", "talker", "--input", '"second"', check=True)
    again = sse_lines(url, token, f"{seq}.{int(lid) - 1}", 2, kind="log")
    texts = [e["text"] for e in again if e["event"] == "log"]
    assert texts[:2] == [line["text"], texts[1]] and "second" in texts[1]
    # the lines stay readable after the agent is deleted
    daemon.ctl("delete", "talker", check=True)
    all_lines = json.loads(get(url + "api/v1/logs?agent=talker", token)[1])
    assert [x["text"] for x in all_lines][-2:] == texts[:2]
    after = json.loads(get(url + f"api/v1/logs?after={lid}", token)[1])
    assert [x["text"] for x in after if x["agent"] == "talker"] == texts[1:2]
    assert get(url + "api/v1/logs?after=x", token)[0] == 400


def test_agents_carry_run_counts_cost_and_recent_runs(daemon: Naosd, tmp_path):
    url, token = login(daemon)
    daemon.ctl("create", "counted", "--template", "echo", check=True)
    daemon.ctl("create", "idle", "--template", "echo", check=True)
    for i in range(3):
        daemon.ctl("run", "counted", "--input", f'"m{i}"', check=True)
    agents = {a["name"]: a for a in json.loads(get(url + "api/v1/agents", token)[1])}
    assert agents["counted"]["messages"] == 3 and agents["counted"]["failures"] == 0
    assert agents["counted"]["last_run"] is not None
    assert agents["idle"]["messages"] == 0 and agents["idle"]["last_run"] is None
    detail = json.loads(get(url + "api/v1/agents/counted", token)[1])
    assert len(detail["runs"]) == 3 and all(r["ok"] for r in detail["runs"])
    assert detail["runs"][0]["seq"] > detail["runs"][-1]["seq"]  # newest first


def test_read_only_methods_are_rest_resources(daemon: Naosd):
    url, token = login(daemon)
    daemon.ctl("supervisor", "create", "crew", check=True)
    assert get(url + "api/v1/supervisors", None)[0] == 401
    sups = json.loads(get(url + "api/v1/supervisors", token)[1])
    assert "crew" in json.dumps(sups)
    methods = json.loads(get(url + "api/v1/methods", token)[1])
    assert "agent.run" in json.dumps(methods)


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


def post(url: str, token: str, *, origin: str | None, csrf: str | None,
         body: bytes = b"") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    if csrf is not None:
        headers["X-Naos-CSRF"] = csrf
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        out = exc.code, exc.read()
        exc.close()
        return out


def test_actions_need_same_origin_and_the_csrf_header(daemon: Naosd):
    url, token = login(daemon)
    daemon.ctl("create", "steered", "--template", "echo", check=True)
    origin = url.rstrip("/")
    session = json.loads(get(url + "api/v1/session", token)[1])
    assert session["csrf_header"] == "X-Naos-CSRF"
    csrf = session["csrf_token"]
    stop = url + "api/v1/agents/steered/stop"
    assert post(stop, token, origin=None, csrf=csrf)[0] == 403
    assert post(stop, token, origin="http://evil.example", csrf=csrf)[0] == 403
    assert post(stop, token, origin=origin, csrf=None)[0] == 403
    assert post(stop, token, origin=origin, csrf="0" * 64)[0] == 403
    state = daemon.agent("steered")
    assert state["state"] == "running"  # none of the refused requests did anything
    status, body = post(stop, token, origin=origin, csrf=csrf)
    assert status == 200, body
    state = daemon.agent("steered")
    assert state["state"] == "stopped"
    # errors keep their meaning over HTTP
    assert post(url + "api/v1/agents/ghost/start", token, origin=origin, csrf=csrf)[0] == 404
    assert post(url + "api/v1/agents/steered/kill", token, origin=origin, csrf=csrf)[0] == 409
    assert post(stop, token, origin=origin, csrf=csrf, body=b"[1]")[0] == 400
    assert post(stop, token, origin=origin, csrf=csrf, body=b"{nope")[0] == 400
    status, _ = post(url + "api/v1/agents/steered/start", token, origin=origin, csrf=csrf,
                     body=json.dumps({"timeout": 20}).encode())
    assert status == 200
    assert daemon.agent("steered")["state"] == "running"


def test_feature_views_over_http(daemon: Naosd):
    url, token = login(daemon)
    for name in ("left", "right"):
        daemon.ctl("create", name, "--template", "echo", check=True)
    daemon.ctl("pool", "create", "pair", "--agents", "left,right", "--merge", "all", check=True)
    daemon.ctl("workflow", "create", "wf", check=True)
    daemon.ctl("workflow", "add-step", "wf", "one", "--agent", "left", check=True)
    run = json.loads(daemon.ctl("workflow", "run", "wf", "--input", '{"n": 1}', "--json",
                                check=True).stdout)
    assert get(url + "api/v1/runs", None)[0] == 401
    runs = json.loads(get(url + "api/v1/runs", token)[1])["runs"]
    assert [(r["kind"], r["id"], r["status"]) for r in runs] == \
        [("workflow", run["run_id"], "completed")]
    detail = json.loads(get(url + f"api/v1/runs/workflow/{run['run_id']}", token)[1])
    assert [(s["name"], s["status"]) for s in detail["steps"]] == [("one", "completed")]
    assert get(url + f"api/v1/runs/saga/{run['run_id']}", token)[0] == 400  # wrong kind
    assert get(url + "api/v1/runs/saga/s-nope", token)[0] == 404
    assert get(url + "api/v1/runs/banana/x", token)[0] == 404
    pools = json.loads(get(url + "api/v1/pools", token)[1])["pools"]
    assert [(p["name"], [m["agent"] for m in p["members"]]) for p in pools] == \
        [("pair", ["left", "right"])]


def test_cost_broker_and_trust_views(daemon: Naosd):
    url, token = login(daemon)
    for path in ("api/v1/cost", "api/v1/broker", "api/v1/trust"):
        assert get(url + path, None)[0] == 401, path
    daemon.ctl("cost", "set", "ann", "--budget", "$1/day", "--alert-at", "50", check=True)
    daemon.ctl("axis", "register", "ann", "--t-score", "900", "--c-score", "950", check=True)
    daemon.ctl("axis", "register", "bob", "--t-score", "150", "--c-score", "100", check=True)
    daemon.ctl("broker", "execute", "sha256 of: x", "--agent", "ann", check=True)
    assert daemon.ctl("broker", "execute", "sha256 of: x", "--agent", "bob").returncode != 0
    cost = json.loads(get(url + "api/v1/cost", token)[1])
    [budget] = cost["budgets"]
    assert (budget["agent"], budget["scope"], budget["limit_micro"]) == ("ann", "agent", 1_000_000)
    assert budget["spent_micro"] == cost["spend_today_micro"] > 0
    assert budget["state"] == "ok" and budget["alert_at"] == [50]
    assert [(r["agent"], r["tasks"]) for r in cost["by_agent"]] == [("ann", 1)]
    assert sum(p.get("skill", 0) for p in cost["series"]) == budget["spent_micro"]
    daemon.ctl("create", "ann", "--template", "echo", "--no-start", check=True)
    [ann] = json.loads(get(url + "api/v1/agents", token)[1])
    assert ann["cost_micro_usd"] == budget["spent_micro"]  # broker spend counts as its cost
    broker = json.loads(get(url + "api/v1/broker", token)[1])
    assert [(k["kind"], k["count"]) for k in broker["by_kind"]] == [("skill", 1)]
    assert broker["all_llm_micro"] >= broker["cost_micro"] and "saving_micro" in broker
    ok, denied = broker["recent"][1], broker["recent"][0]
    assert (ok["agent"], ok["kind"], ok["ok"]) == ("ann", "skill", True)
    assert (denied["agent"], denied["ok"]) == ("bob", False) and denied["error"]
    assert ok["task"] == "sha256 of: x"
    scores = {x["name"]: x for x in ok["scores"]}
    assert scores["sha256"]["cleared"] is True and 0.5 < scores["sha256"]["confidence"] <= 1
    assert get(url + "api/v1/broker?since=never", token)[0] == 400
    trust = json.loads(get(url + "api/v1/trust", token)[1])
    rows = {a["agent"]: a for a in trust["agents"]}
    assert (rows["ann"]["tier"], rows["ann"]["rating"], rows["ann"]["source"]) == \
        ("T5", "AAA", "local")
    assert (rows["bob"]["tier"], rows["bob"]["rating"]) == ("T1", "D")
    assert [x["agent"] for x in trust["denials"]] == ["bob"] and trust["denials"][0]["reason"]


FAILING = "def handle(message, ctx):\n    raise RuntimeError('offline')\n"


def test_runs_filters_and_run_actions_over_http(daemon: Naosd, tmp_path):
    url, token = login(daemon)
    (tmp_path / "failing.py").write_text(FAILING)
    daemon.ctl("create", "stock", "--template", "echo", check=True)
    daemon.ctl("create", "undo", "--source", str(tmp_path / "failing.py"), check=True)
    daemon.ctl("saga", "create", "order", "--compensation-attempts", "1",
               "--compensation-delay", "0.1", check=True)
    daemon.ctl("saga", "add-step", "order", "reserve", "--agent", "stock", "--compensate",
               "undo", check=True)
    daemon.ctl("saga", "add-step", "order", "charge", "--agent", "undo", check=True)
    run = json.loads(daemon.ctl("saga", "run", "order", "--input", "{}", "--json").stdout)
    assert run["status"] == "compensation_failed", run

    view = json.loads(get(url + "api/v1/runs", token)[1])
    assert view["names"] == ["order"]
    assert set(view["actions"]["saga"]) >= {"retry_compensation", "resolve"}
    assert view["actions"]["saga"]["resolve"]["params"]["note"]["required"] is True
    for query, found in (("status=compensation_failed", 1), ("status=completed", 0),
                         ("name=order", 1), ("name=other", 0), ("kind=workflow", 0),
                         ("since=1h", 1), ("since=2999-01-01T00:00:00Z", 0)):
        runs = json.loads(get(url + "api/v1/runs?" + query, token)[1])["runs"]
        assert len(runs) == found, query
    for query, named in (("since=yesterday", "since: 'yesterday'"), ("kind=pool", "kind"),
                         ("limit=lots", "limit")):
        status, body, _ = get(url + "api/v1/runs?" + query, token)
        assert status == 400 and named in json.loads(body)["message"], (query, body)

    origin, csrf = url.rstrip("/"), json.loads(get(url + "api/v1/session", token)[1])["csrf_token"]
    resolve = url + f"api/v1/runs/saga/{run['run_id']}/resolve"
    note = json.dumps({"note": "done by hand"}).encode()
    assert post(resolve, token, origin=origin, csrf=None, body=note)[0] == 403
    for path in ("explode", "../resolve"):
        assert post(url + f"api/v1/runs/saga/{run['run_id']}/{path}", token, origin=origin,
                    csrf=csrf, body=note)[0] == 404, path
    assert post(url + f"api/v1/runs/workflow/{run['run_id']}/resolve", token, origin=origin,
                csrf=csrf, body=note)[0] == 404  # a workflow cannot be resolved
    status, body = post(resolve, token, origin=origin, csrf=csrf, body=b"{}")
    assert status == 400 and b"note" in body  # the method's own Spec speaks
    status, body = post(resolve, token, origin=origin, csrf=csrf,
                        body=json.dumps({"note": "done", "run": "s-other"}).encode())
    assert status == 200, body  # the path names the run, whatever the body says
    got = json.loads(daemon.ctl("saga", "status", run["run_id"], "--json", check=True).stdout)
    assert got["resolution"] == "done"
    [summary] = json.loads(get(url + "api/v1/runs", token)[1])["runs"]
    assert summary["resolution"] == "done"
