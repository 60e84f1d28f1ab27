"""naos as an MCP client, end to end: real MCP servers written with the SDK's
server side (a stdio script naosd starts, a Streamable HTTP one on 127.0.0.1
behind a bearer token), registered and called through the real naosctl
against the real daemon (tests/mcp_tool_servers.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Naosd, reap, short_tempdir, start_naosd, wait_for, wait_gone
from mcp_tool_servers import free_port, start_http_server, stdio_command, write_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def ok(d: Naosd, *args: str) -> Any:
    out = d.ctl(*args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def server(d: Naosd, name: str) -> dict[str, Any] | None:
    return next((s for s in ok(d, "mcp", "list") if s["name"] == name), None)


def wait_state(d: Naosd, name: str, state: str, timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = server(d, name)
        return found if found is not None and found["state"] == state else None

    try:
        found: dict[str, Any] = wait_for(reached, timeout)
    except AssertionError:
        raise AssertionError(f"{name} never {state}: {server(d, name)}\n"
                             f"{d.log()[-3000:]}") from None
    return found


def audit(d: Naosd, type_: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ok(d, "audit", "tail", "-n", "1000", "--type", type_)
    return rows


def calls_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@pytest.fixture(scope="module")
def daemon(base: Path) -> Iterator[Naosd]:
    d = start_naosd(base)
    try:
        ok(d, "axis", "register", "ann", "--t-score", "800", "--c-score", "800")
        yield d
        assert d.stop() == 0, d.log()[-3000:]  # stops every tool server it started
        assert "Traceback" not in d.log(), d.log()[-5000:]
    finally:
        survivors = reap(d)
        assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


@pytest.fixture(scope="module")
def calc(daemon: Naosd, base: Path) -> Path:
    """The stdio server ``calc`` (add costs 250 µ$, the rest 100); returns the file
    in which it notes every call that reached it."""
    calls = base / "calc-calls.jsonl"
    script = write_server(base)
    ok(daemon, "mcp", "add", "calc", "--command", stdio_command(script), "--env",
       f"CALLS_FILE={calls}", "--price-micro", "100", "--tool-price", "add=250")
    wait_state(daemon, "calc", "up")
    return calls


# -- registering ---------------------------------------------------------------------


def test_bad_registrations_are_refused_by_name(daemon: Naosd, base: Path):
    script = write_server(base)
    loose = base / "loose.token"
    loose.write_text("t0k")
    loose.chmod(0o644)
    mine = daemon.state_dir / "dashboard.token"
    cases = [
        (("my.calc", "--command", stdio_command(script)), 2, "no dots"),
        (("ghost", "--command", "no-such-program-here --flag"), 2, "no such executable"),
        (("both", "--command", "true", "--url", "http://127.0.0.1:1/mcp"), 2, "one of"),
        (("neither",), 2, "--command (stdio) or --url"),
        (("web", "--url", "http://127.0.0.1:1/mcp", "--token-env", "NAOS_LLM_API_KEY"), 2,
         "naosd's own settings"),
        (("web", "--url", "http://127.0.0.1:1/mcp", "--token-env", "NOT_SET_ANYWHERE"), 6,
         "no $NOT_SET_ANYWHERE"),
        (("web", "--url", "http://127.0.0.1:1/mcp", "--token-file", str(loose)), 6,
         "chmod 600"),
        (("web", "--url", "http://127.0.0.1:1/mcp", "--token-file", str(mine)), 2,
         "a file of naosd's own"),
        (("web", "--url", "http://tools.example/mcp", "--token-env", "HOME"), 2,
         "only sent over https"),
        (("web", "--url", "http://127.0.0.1:1/mcp", "--env", "A=1"), 2, "do not apply"),
        (("web", "--url", "https://user:pw@tools.example/mcp"), 2, "credentials in the URL"),
        (("calc2", "--command", stdio_command(script), "--tool-price", "add=lots"), 2,
         "tool price of add"),
    ]
    for args, code, says in cases:
        out = daemon.ctl("mcp", "add", *args)
        assert out.returncode == code and says in out.stderr, (args, out.returncode, out.stderr)
    listed = {s["name"] for s in ok(daemon, "mcp", "list")}
    assert not listed & {"my.calc", "ghost", "both", "web", "calc2"}


def test_an_unreachable_url_is_registered_and_shown_down(daemon: Naosd):
    url = f"http://127.0.0.1:{free_port()}/mcp"
    ok(daemon, "mcp", "add", "far", "--url", url)
    try:
        down = wait_state(daemon, "far", "down")
        assert "ConnectError" in down["last_exit"] and down["retry_in_s"] > 0
        wait_for(lambda: server(daemon, "far")["crashes"] >= 3, 60)  # type: ignore[index]
        rows = [r for r in audit(daemon, "toolserver.crashed") if r["detail"]["server"] == "far"]
        assert len(rows) == 1  # one row for the outage, not one per retry
        out = daemon.ctl("mcp", "call", "far.anything")
        assert out.returncode == 1 and "tool server far is down" in out.stderr
    finally:
        ok(daemon, "mcp", "remove", "far")


# -- calling -------------------------------------------------------------------------


def test_tools_are_listed_priced_and_called_with_an_audit_row(daemon: Naosd, calc: Path):
    tools = {t["tool"]: t for t in ok(daemon, "mcp", "tools", "calc")}
    assert {"calc.add", "calc.echo", "calc.files.read", "calc.fail"} <= set(tools)
    assert (tools["calc.add"]["price_micro"], tools["calc.echo"]["price_micro"]) == (250, 100)
    assert tools["calc.files.read"]["function"] == "calc__files_read"
    assert tools["calc.add"]["input_schema"]["required"] == ["a", "b"]
    skills = ok(daemon, "broker", "skills")
    listed = {t["name"]: t for t in skills["tools"]}
    assert listed["calc.add"]["kind"] == "mcp" and listed["calc.add"]["state"] == "up"
    assert "calc.add" not in {s["name"] for s in skills["skills"]}  # never routed
    result = ok(daemon, "mcp", "call", "calc.add", "--args", '{"a": 40213, "b": 17}',
                "--agent", "ann")
    assert result["text"] == "40230" and result["cost_micro"] == 250
    row = audit(daemon, "tool.call")[-1]
    assert row["agent"] == "ann" and row["detail"]["handler"] == "calc.add"
    assert row["detail"]["task_id"] == result["task_id"] and row["detail"]["cost_micro"] == 250
    assert "40213" not in json.dumps(row) and "40230" not in json.dumps(row)
    entries = ok(daemon, "cost", "history", "--agent", "ann")["entries"]
    assert [(e["route_kind"], e["handler"], e["cost_micro"]) for e in entries] == \
        [("tool", "calc.add", 250)]


def test_the_registration_never_shows_env_values(daemon: Naosd, calc: Path):
    assert server(daemon, "calc")["env"] == ["CALLS_FILE"]  # type: ignore[index]
    added = [r for r in audit(daemon, "toolserver.add") if r["detail"]["name"] == "calc"]
    assert added and added[-1]["detail"]["env"] == ["CALLS_FILE"]
    assert str(calc) not in daemon.ctl("audit", "tail", "-n", "1000", "--json").stdout


def test_a_denied_agent_never_reaches_the_server(daemon: Naosd, calc: Path):
    out = daemon.ctl("mcp", "call", "calc.echo", "--args", '{"text": "psst-4417"}',
                     "--agent", "stranger")
    assert out.returncode == 1 and "not registered with the trust gate" in out.stderr
    assert "psst-4417" not in json.dumps(calls_of(calc))
    denied = audit(daemon, "tool.denied")[-1]
    assert denied["agent"] == "stranger" and denied["detail"]["error"] == "trust_denied"


def test_a_tool_error_is_tool_failed_and_charged(daemon: Naosd, calc: Path):
    out = daemon.ctl("mcp", "call", "calc.fail", "--args", '{"why": "no way"}', "--agent",
                     "ann")
    assert out.returncode == 1 and "refused: no way" in out.stderr
    row = audit(daemon, "tool.call")[-1]
    assert (row["detail"]["status"], row["detail"]["error"], row["detail"]["cost_micro"]) == \
        ("failed", "tool_failed", 100)
    bad = daemon.ctl("mcp", "call", "calc.add", "--args", '{"a": 1}', "--agent", "ann")
    assert bad.returncode == 2 and "'b' is a required property" in bad.stderr


def test_a_new_tool_is_listed_after_list_changed(daemon: Naosd, calc: Path):
    assert ok(daemon, "mcp", "call", "calc.grow")["text"] == "grown"
    wait_for(lambda: "calc.mul" in {t["tool"] for t in ok(daemon, "mcp", "tools", "calc")})
    assert ok(daemon, "mcp", "call", "calc.mul", "--args", '{"a": 6, "b": 7}')["text"] == "42"
    refreshed = ok(daemon, "mcp", "tools", "calc", "--refresh")
    assert "calc.mul" in {t["tool"] for t in refreshed}


# -- supervision ---------------------------------------------------------------------


def test_a_killed_server_is_restarted_and_the_next_call_works(daemon: Naosd, calc: Path):
    before = server(daemon, "calc")
    assert before is not None and before["pid"]
    os.kill(before["pid"], signal.SIGKILL)
    # Once naosd saw the exit (a call racing the kill itself fails: tool_server_down,
    # uncharged), the next call waits out the 1 s backoff and the start.
    wait_for(lambda: server(daemon, "calc")["crashes"] > before["crashes"])  # type: ignore[index]
    answer = ok(daemon, "mcp", "call", "calc.whoami")
    assert answer["structured"]["result"] not in (before["pid"], None)
    after = wait_state(daemon, "calc", "up")
    assert after["pid"] == answer["structured"]["result"]
    assert after["crashes"] == before["crashes"] + 1 and after["starts"] == before["starts"] + 1
    crashed = audit(daemon, "toolserver.crashed")[-1]
    assert crashed["detail"]["server"] == "calc" and crashed["detail"]["how"] == "signal SIGKILL"
    assert not wait_gone([before["pid"]], 10)


def test_a_crash_loop_is_failed_until_restarted(daemon: Naosd, base: Path):
    flag = base / "broken"
    flag.write_text("")
    script = write_server(base)
    ok(daemon, "mcp", "add", "flaky", "--command", stdio_command(script), "--env",
       f"BROKEN_FLAG={flag}")
    try:
        failed = wait_state(daemon, "flaky", "failed")
        assert failed["crashes"] == 3 and failed["last_exit"] == "exit code 3"
        out = daemon.ctl("mcp", "call", "flaky.add", "--args", '{"a": 1, "b": 2}')
        assert out.returncode == 1 and "naosctl mcp restart flaky" in out.stderr
        gave_up = audit(daemon, "toolserver.failed")[-1]
        assert gave_up["detail"]["server"] == "flaky" and gave_up["detail"]["crashes"] == 3
        time.sleep(1.5)
        assert server(daemon, "flaky")["starts"] == 3  # type: ignore[index] # left alone
        flag.unlink()
        ok(daemon, "mcp", "restart", "flaky")
        up = wait_state(daemon, "flaky", "up")
        assert up["crashes"] == 0
        assert ok(daemon, "mcp", "call", "flaky.add", "--args", '{"a": 1, "b": 2}')["text"] \
            == "3"
    finally:
        ok(daemon, "mcp", "remove", "flaky")


def test_remove_stops_the_server(daemon: Naosd, base: Path):
    ok(daemon, "mcp", "add", "temp", "--command", stdio_command(write_server(base)))
    pid = wait_state(daemon, "temp", "up")["pid"]
    assert daemon.ctl("mcp", "remove", "temp").stdout.strip() == "removed temp"
    assert not wait_gone([pid], 15)
    assert server(daemon, "temp") is None
    assert audit(daemon, "toolserver.remove")[-1]["detail"]["name"] == "temp"
    out = daemon.ctl("mcp", "call", "temp.add")
    assert out.returncode == 2 and "no tool server 'temp'" in out.stderr


# -- Streamable HTTP -------------------------------------------------------------------


def test_an_http_server_is_called_with_its_bearer_token(daemon: Naosd, base: Path):
    script = write_server(base)
    calls = base / "web-calls.jsonl"
    http = start_http_server(script, "t0k-e2e", base / "web.log", calls=calls)
    token, wrong = base / "web.token", base / "wrong.token"
    token.write_text("t0k-e2e\n")
    wrong.write_text("nope\n")
    token.chmod(0o600)
    wrong.chmod(0o600)
    try:
        ok(daemon, "mcp", "add", "web", "--url", http.url, "--token-file", str(token),
           "--price-micro", "7")
        ok(daemon, "mcp", "add", "web-bad", "--url", http.url, "--token-file", str(wrong))
        assert wait_state(daemon, "web", "up")["pid"] is None
        result = ok(daemon, "mcp", "call", "web.add", "--args", '{"a": 1, "b": 2}',
                    "--agent", "ann")
        assert result["text"] == "3" and result["cost_micro"] == 7
        assert calls_of(calls) == [{"tool": "add", "args": {"a": 1, "b": 2}}]
        assert "HTTP 401" in wait_state(daemon, "web-bad", "down")["last_exit"]
        assert "t0k-e2e" not in json.dumps(ok(daemon, "mcp", "list"))
        http.stop()
        out = daemon.ctl("mcp", "call", "web.add", "--args", '{"a": 1, "b": 2}')
        assert out.returncode == 1 and "tool server web" in out.stderr, out.stderr
        http = start_http_server(script, "t0k-e2e", base / "web.log", port=http.port,
                                 calls=calls)
        back = wait_for(lambda: ok(daemon, "mcp", "call", "web.add", "--args",
                                   '{"a": 2, "b": 2}') if server(daemon, "web")["state"]  # type: ignore[index]
                        == "up" else None, 90)
        assert back["text"] == "4"
    finally:
        http.stop()
        ok(daemon, "mcp", "remove", "web")
        ok(daemon, "mcp", "remove", "web-bad")


# -- across a restart of naosd ---------------------------------------------------------


def test_registered_servers_start_again_with_naosd():
    with short_tempdir() as other:
        d = start_naosd(other)
        try:
            ok(d, "mcp", "add", "calc", "--command", stdio_command(write_server(other)))
            pid = wait_state(d, "calc", "up")["pid"]
            assert d.stop() == 0
            assert not wait_gone([pid], 10)  # stopped with naosd
            d = start_naosd(other)
            assert wait_state(d, "calc", "up")["pid"] != pid
            assert ok(d, "mcp", "call", "calc.add", "--args", '{"a": 5, "b": 6}')["text"] == "11"
            assert ok(d, "audit", "verify")["ok"] is True
            assert d.stop() == 0
        finally:
            assert not reap(d), d.log()
