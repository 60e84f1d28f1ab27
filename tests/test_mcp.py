"""naos as an MCP server, driven by the official SDK's client against the real
daemon: over stdio (``naosctl mcp serve`` as the client's subprocess) and over
Streamable HTTP (``/mcp`` on the dashboard, with its token)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from harness import Naosd, clean_env, reap, short_tempdir, start_naosd
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS
from orch_agents import Lab

pytestmark = pytest.mark.e2e

BOOM = '''
def handle(message, ctx):
    raise RuntimeError("the boom agent always fails")
'''

GREETER_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}},
                  "required": ["name"], "additionalProperties": False}


def project(base: Path) -> str:
    return f'''
[agents.greeter]
template = "echo"
description = "Greets someone by name"
[agents.greeter.input_schema]
type = "object"
properties = {{ name = {{ type = "string" }} }}
required = ["name"]
additionalProperties = false

[agents.boom]
source = "{base / 'boom.py'}"
'''


def define_runs(d: Naosd, lab: Lab) -> None:
    """A one-step saga and workflow over the ledger agent (tests/orch_agents.py)."""
    ok(d, "create", "inventory", "--source", str(lab.handler), *lab.grant,
       "--config", lab.config())
    ok(d, "create", "inventory-release", "--source", str(lab.handler), *lab.grant,
       "--config", lab.config(True))
    ok(d, "saga", "create", "order", "--step-timeout", "20")
    ok(d, "saga", "add-step", "order", "reserve", "--agent", "inventory",
       "--compensate", "inventory-release")
    ok(d, "workflow", "create", "etl")
    ok(d, "workflow", "add-step", "etl", "one", "--agent", "inventory")


def ok(d: Naosd, *args: str) -> Any:
    out = d.ctl(*args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@pytest.fixture(scope="module")
def daemon(base: Path) -> Iterator[Naosd]:
    """One daemon for the module, with the project applied and the default MCP
    identity registered with the trust gate (local scores)."""
    d = start_naosd(base)
    try:
        (base / "boom.py").write_text(BOOM)
        (base / "naos.toml").write_text(project(base))
        ok(d, "apply", str(base / "naos.toml"))
        define_runs(d, Lab(base))
        ok(d, "axis", "register", "mcp-client", "--t-score", "700", "--c-score", "700")
        yield d
        # a graceful stop ends the /mcp transport the tests started
        assert d.stop() == 0, d.log()[-3000:]
        assert "Traceback" not in d.log(), d.log()[-3000:]
    finally:
        survivors = reap(d)
        assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


def stdio(d: Naosd, *extra: str, mode: str = "auto") -> Client:
    """The SDK's client with ``naosctl mcp serve`` as its stdio subprocess."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "naosctl", "--socket", str(d.socket), "mcp", "serve", *extra],
        env=d.env)
    return Client(params, mode=mode)


def dashboard(d: Naosd) -> tuple[str, str]:
    info = ok(d, "dashboard")
    return info["url"] + "mcp", info["login_url"].split("token=", 1)[1]


@asynccontextmanager
async def http(d: Naosd, mode: str = "auto") -> AsyncIterator[Client]:
    url, token = dashboard(d)
    async with (httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as web,
                Client(streamable_http_client(url, http_client=web), mode=mode) as client):
        yield client


def audit(d: Naosd, type_: str, n: int = 500) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ok(d, "audit", "tail", "-n", str(n), "--type", type_)
    return rows


# -- stdio -------------------------------------------------------------------------


async def test_tools_follow_the_definitions(daemon: Naosd):
    async with stdio(daemon) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"agent_greeter", "agent_boom", "agent_inventory", "saga_order",
                "workflow_etl", "skill_word-count", "skill_sha256"} <= set(tools)
        greeter = tools["agent_greeter"]
        assert greeter.input_schema == GREETER_SCHEMA
        assert greeter.description is not None
        assert greeter.description.startswith("Greets someone by name")
        assert tools["agent_boom"].input_schema["type"] == "object"
        assert tools["skill_sha256"].input_schema["required"] == ["task"]
        assert "reserve (inventory)" in (tools["saga_order"].description or "")
        ok(daemon, "create", "late", "--template", "echo")
        try:  # a definition made meanwhile is listed at once
            again = {t.name for t in (await client.list_tools()).tools}
            assert "agent_late" in again
        finally:
            ok(daemon, "delete", "late")
        assert "agent_late" not in {t.name for t in (await client.list_tools()).tools}


async def test_agent_tool_runs_the_agent_and_checks_its_schema(daemon: Naosd):
    async with stdio(daemon) as client:
        result = await client.call_tool("agent_greeter", {"name": "ada"})
        assert not result.is_error
        assert result.structured_content["output"] == {"name": "ada"}
        assert json.loads(result.content[0].text) == {"name": "ada"}
        bad = await client.call_tool("agent_greeter", {"nom": "ada"})
        assert bad.is_error
        error = bad.structured_content["error"]
        assert error["code"] == "invalid_request"
        assert "input_schema" in error["message"] and "name" in error["message"]


async def test_a_failing_agent_is_a_tool_error_and_an_unknown_tool_a_protocol_error(
        daemon: Naosd):
    async with stdio(daemon) as client:
        crashed = await client.call_tool("agent_boom", {})
        assert crashed.is_error
        assert crashed.structured_content["error"]["code"] == "agent_crashed"
        assert "always fails" in crashed.structured_content["error"]["message"]
        for name in ("agent_ghost", "nothing", "saga_ghost", "skill_ghost", "agent_Bad"):
            with pytest.raises(MCPError) as caught:
                await client.call_tool(name, {})
            assert caught.value.code == INVALID_PARAMS
            assert "unknown tool" in caught.value.message
        with pytest.raises(MCPError):
            await client.read_resource("naos://nope")
        skill = await client.call_tool("skill_sha256", {"text": "not a task"})
        assert skill.is_error and skill.structured_content["error"]["code"] == "invalid_request"
    refused = [r for r in audit(daemon, "mcp.call") if r["detail"]["tool"] == "agent_ghost"]
    assert refused and refused[-1]["detail"]["error"] == "not_found"


async def test_skill_tool_goes_through_the_trust_gate_for_the_identity(daemon: Naosd):
    async with stdio(daemon) as client:
        counted = await client.call_tool("skill_word-count", {"task": "one two three"})
        assert not counted.is_error, counted
        assert counted.structured_content["handler"] == "word-count"
        assert counted.structured_content["agent"] == "mcp-client"
        assert counted.structured_content["pinned"] is True
    async with stdio(daemon, "--as", "stranger") as client:  # not registered with the gate
        denied = await client.call_tool("skill_word-count", {"task": "one two"})
        assert denied.is_error
        assert denied.structured_content["error"]["code"] == "trust_denied"
        assert "stranger" in denied.structured_content["error"]["message"]
    executed = audit(daemon, "broker.execute")[-1]
    assert executed["agent"] == "mcp-client"
    assert executed["detail"]["via"] == "mcp" and executed["detail"]["as"] == "mcp-client"
    denial = audit(daemon, "broker.denied")[-1]
    assert denial["agent"] == "stranger" and denial["detail"]["as"] == "stranger"


async def test_saga_and_workflow_tools_return_the_runs_outcome(daemon: Naosd):
    async with stdio(daemon) as client:
        done = await client.call_tool("saga_order", {"order": 7})
        assert not done.is_error, done
        run = done.structured_content["run"]
        assert run["status"] == "completed"
        assert done.structured_content["outputs"]["reserve"]["by"] == "inventory"
        undone = await client.call_tool("saga_order", {"fail_at": "reserve"})
        assert undone.is_error
        assert undone.structured_content["error"]["code"] == "compensated"
        assert "declined" in undone.structured_content["error"]["message"]
        flow = await client.call_tool("workflow_etl", {})
        assert not flow.is_error and flow.structured_content["run"]["status"] == "completed"
    started = [r for r in audit(daemon, "saga.started") if r["detail"].get("run_id")
               == run["run_id"]]
    assert started and started[0]["detail"]["via"] == "mcp"
    steps = [r for r in audit(daemon, "agent.run") if r["agent"] == "inventory"]
    assert steps and steps[-1]["detail"]["as"] == "mcp-client"
    calls = [r for r in audit(daemon, "mcp.call") if r["detail"].get("run_id")
             == run["run_id"]]
    assert calls and calls[0]["detail"]["tool"] == "saga_order"


async def test_resources_status_and_recent_audit(daemon: Naosd):
    async with stdio(daemon) as client:
        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        assert listed == {"naos://status", "naos://audit/recent"}
        status = await client.read_resource("naos://status")
        assert json.loads(status.contents[0].text)["pid"] == daemon.pid
        recent = await client.read_resource("naos://audit/recent")
        rows = json.loads(recent.contents[0].text)
        assert 0 < len(rows) <= 50 and all("hash" in r for r in rows)


async def test_audit_rows_name_the_mcp_identity(daemon: Naosd):
    async with stdio(daemon, "--as", "auditor") as client:
        assert not (await client.call_tool("agent_greeter", {"name": "bo"})).is_error
    call = audit(daemon, "mcp.call")[-1]
    assert call["actor"] == "mcp:auditor" and call["agent"] == "greeter"
    assert call["detail"]["transport"] == "stdio" and call["detail"]["ok"] is True
    assert call["detail"]["via"] == "mcp" and call["detail"]["as"] == "auditor"
    run = [r for r in audit(daemon, "agent.run") if r["agent"] == "greeter"][-1]
    assert run["detail"]["via"] == "mcp" and run["detail"]["as"] == "auditor"
    plain = daemon.ctl("run", "greeter", "--input", '{"name": "cli"}')
    assert plain.returncode == 0, plain.stderr
    cli_run = [r for r in audit(daemon, "agent.run") if r["agent"] == "greeter"][-1]
    assert "via" not in cli_run["detail"] and "as" not in cli_run["detail"]
    found = ok(daemon, "audit", "search", '"as":"auditor"')  # as docs/interop.md says
    assert {r["type"] for r in found} >= {"mcp.call", "agent.run"}
    assert ok(daemon, "audit", "verify")["ok"] is True


async def test_legacy_handshake_clients_are_served(daemon: Naosd):
    async with stdio(daemon, mode="legacy") as client:
        assert client.protocol_version.startswith("2025")
        assert not (await client.call_tool("agent_greeter", {"name": "old"})).is_error


def test_serve_refuses_a_bad_identity_and_a_missing_daemon(daemon: Naosd, base: Path):
    bad = daemon.ctl("mcp", "serve", "--as", "Not Valid")
    assert bad.returncode == 2 and "--as" in bad.stderr
    gone = daemon.ctl("--socket", str(base / "nowhere.sock"), "mcp", "serve", input="")
    assert gone.returncode == 7 and "not running" in gone.stderr


# -- Streamable HTTP ---------------------------------------------------------------


async def test_http_lists_calls_and_reads_with_the_token(daemon: Naosd):
    async with http(daemon) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"agent_greeter", "saga_order", "skill_sha256"} <= names
        result = await client.call_tool("agent_greeter", {"name": "web"})
        assert not result.is_error and result.structured_content["output"] == {"name": "web"}
        crashed = await client.call_tool("agent_boom", {})
        assert crashed.is_error and crashed.structured_content["error"]["code"] == "agent_crashed"
        with pytest.raises(MCPError) as caught:
            await client.call_tool("agent_ghost", {})
        assert caught.value.code == INVALID_PARAMS
        status = await client.read_resource("naos://status")
        assert json.loads(status.contents[0].text)["pid"] == daemon.pid
    async with http(daemon, mode="legacy") as client:
        assert not (await client.call_tool("agent_greeter", {"name": "old"})).is_error
    call = [r for r in audit(daemon, "mcp.call") if r["detail"]["transport"] == "http"][-1]
    assert call["actor"] == "mcp:mcp-client" and call["detail"]["as"] == "mcp-client"


async def test_config_picks_the_identity_and_the_exposed_tools(daemon: Naosd, base: Path):
    config = base / "xdg-config" / "naos" / "naosd.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[mcp]\nidentity = "ide"\ntools = ["agent_gr*", "skill_sha256"]\n')
    try:
        assert "mcp.identity" in ok(daemon, "reload")["changed"]
        async with http(daemon) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {"agent_greeter", "skill_sha256"}
            assert not (await client.call_tool("agent_greeter", {"name": "x"})).is_error
            with pytest.raises(MCPError):
                await client.call_tool("agent_boom", {})  # defined, but not exposed
        call = [r for r in audit(daemon, "mcp.call") if r["detail"]["tool"] == "agent_boom"][-1]
        assert call["actor"] == "mcp:ide" and call["detail"]["error"] == "not_found"
    finally:
        config.unlink()
        ok(daemon, "reload")


def post(url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, str]:
    body = body or json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_http_refuses_requests_without_the_token(daemon: Naosd):
    url, token = dashboard(daemon)
    assert post(url, {})[0] == 401
    status, text = post(url, {"Authorization": "Bearer wrong"})
    assert status == 401 and "Bearer" in text
    assert post(url, {"Cookie": f"naos_session={token}"})[0] == 401  # no ambient credentials
    bearer = {"Authorization": f"Bearer {token}"}
    assert post(url, {**bearer, "Origin": "http://evil.example"})[0] == 403
    host = url.split("/")[2]
    assert post(url, {**bearer, "Host": f"evil.example:{host.split(':')[1]}"})[0] == 403
    assert post(url, {**bearer, "Origin": f"http://{host}"})[0] == 200


def test_http_bounds_the_request_body(daemon: Naosd):
    url, token = dashboard(daemon)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "agent_greeter", "arguments": {"name": "x" * (2 << 20)}}}
    before = len(audit(daemon, "mcp.call", 10_000))
    status, _ = post(url, {"Authorization": f"Bearer {token}"}, json.dumps(call).encode())
    assert status == 413  # aiohttp's client_max_size (1 MiB), before the SDK sees it
    assert len(audit(daemon, "mcp.call", 10_000)) == before


# -- without the SDK -----------------------------------------------------------------


@pytest.fixture(scope="module")
def no_sdk(base: Path) -> dict[str, str]:
    """An environment in which ``import mcp`` fails, as without the extra."""
    shadow = base / "no-sdk" / "mcp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    return {"PYTHONPATH": str(shadow.parent)}


def test_serve_without_the_sdk_exits_6(daemon: Naosd, no_sdk: dict[str, str]):
    env = {**daemon.env, **no_sdk}
    out = naosctl_with(env, "--socket", str(daemon.socket), "mcp", "serve")
    assert out.returncode == 6, out.stderr
    assert "pip install 'naos[mcp]'" in out.stderr


def test_naosd_without_the_sdk_answers_404_on_mcp(no_sdk: dict[str, str]):
    with short_tempdir() as other:
        env = clean_env(XDG_RUNTIME_DIR=str(other), XDG_STATE_HOME=str(other / "xdg-state"),
                        XDG_CONFIG_HOME=str(other / "xdg-config"), **no_sdk)
        d = start_naosd(other, env=env)
        try:
            ok(d, "create", "echo", "--template", "echo")
            assert ok(d, "run", "echo", "--input", "{}")["output"] == {}
            url, token = dashboard(d)
            status, text = post(url, {"Authorization": f"Bearer {token}"})
            assert status == 404 and "pip install 'naos[mcp]'" in text
            assert post(url, {})[0] == 401  # the token is still checked first
        finally:
            assert not reap(d), d.log()


def naosctl_with(env: dict[str, str], *args: str) -> Any:
    import subprocess

    return subprocess.run([sys.executable, "-m", "naosctl", *args], capture_output=True,
                          text=True, timeout=60, env=env, input="")
