"""The pure parts of naos's MCP server: tool names and schemas, result shapes,
the audit origin, the ``[mcp]`` settings and the agents' ``input_schema``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from actors.domain.definitions import AgentDef, check_input_schema
from actors.domain.project import parse
from naosd.config import load
from naosd.errors import ConfigError, InvalidRequest
from naosd.mcp import catalog
from naosd.mcp.catalog import ToolRef
from naosd.mcp.gateway import check_arguments
from naosd.storage.origin import acting_for, current, stamp

ALL = ("*",)


@pytest.mark.parametrize(("tool", "ref"), [
    ("agent_echo", ToolRef("agent", "echo")),
    ("saga_order-2", ToolRef("saga", "order-2")),
    ("workflow_etl", ToolRef("workflow", "etl")),
    ("skill_word-count", ToolRef("skill", "word-count")),
])
def test_tool_names_round_trip(tool, ref):
    assert catalog.parse_tool(tool, ALL) == ref
    assert ref.tool == tool


@pytest.mark.parametrize("tool", ["agent", "agent_", "pool_p", "agent_Echo", "agent_a_b",
                                  "agent.echo.run", "", "x" * 300, "agent_" + "a" * 65])
def test_malformed_or_unknown_tool_names_name_nothing(tool):
    assert catalog.parse_tool(tool, ALL) is None


def test_only_exposed_tools_are_named():
    patterns = ("agent_*", "skill_sha256")
    assert catalog.parse_tool("agent_echo", patterns) == ToolRef("agent", "echo")
    assert catalog.parse_tool("skill_sha256", patterns) == ToolRef("skill", "sha256")
    assert catalog.parse_tool("skill_word-count", patterns) is None
    assert catalog.parse_tool("saga_order", patterns) is None
    assert catalog.parse_tool("agent_echo", ()) is None


def test_tool_names_keep_to_what_llm_apis_accept():
    import re

    names = [catalog.agent_tool({"name": "a-b9"})["name"],
             catalog.run_tool("workflow", {"name": "w", "steps": []})["name"],
             catalog.skill_tool({"name": "json-extract", "kind": "skill"})["name"]]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", n) for n in names)


def test_agent_tool_takes_description_and_schema_from_the_config():
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    tool = catalog.agent_tool({"name": "finder", "config": {"description": "Finds things.",
                                                            "input_schema": schema}})
    assert tool["inputSchema"] == schema
    assert tool["description"].startswith("Finds things. Runs the agent once")
    plain = catalog.agent_tool({"name": "echo", "config": {}}, "Replies with the message")
    assert plain["inputSchema"] == catalog.ANY_OBJECT
    assert plain["description"].startswith("Replies with the message.")


def test_run_tool_names_its_steps():
    tool = catalog.run_tool("saga", {"name": "order", "steps": [
        {"name": "reserve", "agent": "inv"}, {"name": "ship", "agent": "ship"}]})
    assert "reserve (inv) -> ship (ship)" in tool["description"]
    assert "compensated" in tool["description"]


def run_view(status: str, error: str = "") -> dict:
    return {"run_id": "s-1", "kind": "saga", "status": status, "error": error,
            "steps": [{"name": "a", "output": {"n": 1}}]}


def test_run_results_by_status():
    done = catalog.run_result(run_view("completed"), 50)
    assert not done["isError"] and done["structuredContent"]["outputs"] == {"a": {"n": 1}}
    for status in catalog.RUN_FAILED:
        bad = catalog.run_result(run_view(status, "step a failed: no"), 50)
        assert bad["isError"]
        assert bad["structuredContent"]["error"] == {"code": status,
                                                     "message": "step a failed: no"}
    later = catalog.run_result(run_view("running"), 50)
    assert not later["isError"] and later["structuredContent"]["still_running"] is True
    assert "still running after 50s" in later["content"][0]["text"]
    waiting = catalog.run_result({**run_view("awaiting_approval"),
                                  "awaiting": {"step": "approve"}}, 50)
    assert not waiting["isError"] and waiting["structuredContent"]["awaiting_approval"] == \
        "approve"
    assert "awaits a person's approval of step approve" in waiting["content"][0]["text"]
    assert "cancelled" in catalog.RUN_FAILED


def test_an_approval_step_is_named_as_a_persons():
    tool = catalog.run_tool("saga", {"name": "order", "steps": [
        {"name": "reserve", "agent": "inv"}, {"name": "approve", "agent": ""}]})
    assert "reserve (inv) -> approve (a person approves)" in tool["description"]


def test_results_are_mcp_call_tool_results():
    shaped = catalog.agent_result({"agent": "e", "output": "plain text"})
    assert shaped["content"] == [{"type": "text", "text": "plain text"}]
    raw = catalog.agent_result({"agent": "e", "output": {"blob": b"\x00\xff"}})
    assert raw["structuredContent"]["output"] == {"blob": "b'\\x00\\xff'"}
    assert raw["content"][0]["text"] == '{"blob": "b\'\\\\x00\\\\xff\'"}'
    failed = catalog.failed("trust_denied", "no")
    assert failed["isError"] and failed["content"][0]["text"] == "trust_denied: no"


# -- the audit origin ----------------------------------------------------------------


def test_stamp_adds_the_origin_only_inside_acting_for():
    assert stamp({"a": 1}) == {"a": 1} and current() is None
    with acting_for("mcp", "ide"):
        assert stamp({"a": 1}) == {"a": 1, "via": "mcp", "as": "ide"}
        assert stamp({"via": "forged", "as": "x"}) == {"via": "mcp", "as": "ide"}
        with acting_for("mcp", "other"):
            assert current() == {"via": "mcp", "as": "other"}
        assert current() == {"via": "mcp", "as": "ide"}
    assert current() is None


async def test_the_origin_follows_tasks_started_inside_and_no_others():
    seen: dict[str, object] = {}

    async def record(key: str) -> None:
        await asyncio.sleep(0)
        seen[key] = current()

    outside = asyncio.ensure_future(record("outside"))
    with acting_for("mcp", "ide"):
        inside = asyncio.ensure_future(record("inside"))
    await asyncio.gather(outside, inside)
    assert seen == {"outside": None, "inside": {"via": "mcp", "as": "ide"}}


# -- settings and definitions --------------------------------------------------------


def settings(**environ: str):
    return load(environ=environ, uid=1000, home=Path("/nonexistent"))


def test_mcp_settings_defaults_and_environment():
    c = settings()
    assert (c.mcp_identity, c.mcp_tools, c.mcp_run_wait) == ("mcp-client", ("*",), 50.0)
    c = settings(NAOS_MCP_IDENTITY="ide", NAOS_MCP_TOOLS="agent_*, skill_sha256",
                 NAOS_MCP_RUN_WAIT="10")
    assert (c.mcp_identity, c.mcp_tools, c.mcp_run_wait) == ("ide", ("agent_*", "skill_sha256"),
                                                             10.0)


@pytest.mark.parametrize(("var", "value", "says"), [
    ("NAOS_MCP_IDENTITY", "Bad Name", "not a valid agent name"),
    ("NAOS_MCP_IDENTITY", "", "not a valid agent name"),
    ("NAOS_MCP_TOOLS", "agent_*, rm -rf", "not a tool name pattern"),
    ("NAOS_MCP_RUN_WAIT", "0", "between 1 and 3600"),
])
def test_bad_mcp_settings_name_the_key(var, value, says):
    with pytest.raises(ConfigError) as caught:
        settings(**{var: value})
    assert f"${var}" in caught.value.message and says in caught.value.message


def agent_with(**config: object) -> AgentDef:
    return AgentDef("a", "template", "echo", dict(config))


@pytest.mark.parametrize(("schema", "says"), [
    ("not a table", "expected a JSON Schema object"),
    ({"type": "string"}, 'must be "object"'),
    ({"type": "object", "properties": []}, "properties: expected a table"),
    ({"type": "object", "required": "name"}, "required: expected a list"),
    ({"type": "object", "default": {"when": datetime(2026, 1, 1)}}, "not a JSON value"),
    ({"type": "object", "x": "y" * 70_000}, "larger than 64 KiB"),
])
def test_bad_input_schemas_are_refused_with_the_rule(schema, says):
    with pytest.raises(InvalidRequest) as caught:
        agent_with(input_schema=schema).validated()
    assert says in caught.value.message and "config.input_schema" in caught.value.message


def test_deep_schemas_and_long_descriptions_are_refused():
    deep: dict = {"type": "object"}
    node = deep
    for _ in range(40):
        node["items"] = {}
        node = node["items"]
    with pytest.raises(InvalidRequest, match="nested deeper"):
        check_input_schema(deep)
    with pytest.raises(InvalidRequest, match=r"config\.description"):
        agent_with(description="x" * 2000).validated()


def test_project_carries_description_and_input_schema_in_the_config(tmp_path: Path):
    doc = {"agents": {"finder": {"template": "echo", "description": "Finds.",
                                 "input_schema": {"type": "object"}, "config": {"k": 1}}}}
    agent = parse(doc, tmp_path).agents[0]
    assert agent.config == {"k": 1, "description": "Finds.", "input_schema": {"type": "object"}}
    twice = {"agents": {"f": {"template": "echo", "description": "a",
                              "config": {"description": "b"}}}}
    with pytest.raises(ConfigError, match=r"agents\.f\.description: given twice"):
        parse(twice, tmp_path)
    bad = {"agents": {"f": {"template": "echo", "input_schema": {"type": "array"}}}}
    with pytest.raises(ConfigError, match=r"agents\.f: config\.input_schema\.type"):
        parse(bad, tmp_path)


def test_arguments_are_checked_against_the_declared_schema():
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
              "required": ["n"]}
    check_arguments({"n": 2}, schema, "agent 'a'")
    with pytest.raises(InvalidRequest, match="at n: 0 is less than the minimum of 1"):
        check_arguments({"n": 0}, schema, "agent 'a'")
    with pytest.raises(InvalidRequest, match=r"at \(the arguments\): 'n' is a required"):
        check_arguments({}, schema, "agent 'a'")
    with pytest.raises(InvalidRequest, match="not a valid JSON Schema"):
        check_arguments({}, {"type": "object", "properties": {"n": {"type": 5}}}, "agent 'a'")
