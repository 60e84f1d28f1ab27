"""The MCP client's pure rules (actors.domain.tool_servers): what may be
registered, how a server's tools are named for agents and LLMs, what a call
costs."""

from __future__ import annotations

import pytest

from actors.domain.tool_servers import (
    MAX_TOOLS,
    ServerDef,
    listing,
    result_text,
    server_def,
    split_tool,
)
from naosd.errors import InvalidRequest, UnknownTool

STDIO = {"name": "calc", "transport": "stdio", "command": ["/usr/bin/python3", "s.py"],
         "cwd": "/srv"}
HTTP = {"name": "web", "transport": "http", "url": "https://tools.example/mcp"}


def test_a_stdio_definition_keeps_its_command_env_and_prices() -> None:
    d = server_def({**STDIO, "env": ["KEY=s3cret", "MODE=a=b"], "price_micro": 100,
                    "tool_prices": ["add=250", "files.read=0"]})
    assert d.command == ("/usr/bin/python3", "s.py") and d.env == {"KEY": "s3cret",
                                                                    "MODE": "a=b"}
    assert (d.price_of("add"), d.price_of("files.read"), d.price_of("echo")) == (250, 0, 100)
    assert server_def(d.to_json()) == d  # the database round trip


def test_the_public_view_has_no_env_value_and_no_token() -> None:
    d = server_def({**STDIO, "env": ["KEY=s3cret"]})
    assert "s3cret" not in str(d.public()) and d.public()["env"] == ["KEY"]
    h = server_def({**HTTP, "token_env": "WEB_TOKEN"})
    assert h.public()["token"] == "env" and h.public()["token_env"] == "WEB_TOKEN"


@pytest.mark.parametrize(("raw", "says"), [
    pytest.param({**STDIO, "name": "my.server"}, "no dots", id="dotted-name"),
    pytest.param({**STDIO, "name": "My_Server"}, "lower-case", id="bad-name"),
    pytest.param({**STDIO, "transport": "ws"}, "transport must be", id="transport"),
    pytest.param({**STDIO, "command": []}, "command: a program", id="no-command"),
    pytest.param({**STDIO, "cwd": "rel"}, "absolute path", id="relative-cwd"),
    pytest.param({**STDIO, "env": ["1X=2"]}, "not a variable name", id="env-key"),
    pytest.param({**STDIO, "env": ["A=1", "A=2"]}, "given twice", id="env-twice"),
    pytest.param({**STDIO, "env": ["NOEQUALS"]}, "not KEY=VALUE", id="env-pair"),
    pytest.param({**STDIO, "url": "http://x"}, "url (--url) do not apply to a stdio",
                 id="url-on-stdio"),
    pytest.param({**HTTP, "env": ["A=1"]}, "env (--env) do not apply", id="env-on-http"),
    pytest.param({**HTTP, "url": "ftp://x/mcp"}, "http:// or https://", id="scheme"),
    pytest.param({**HTTP, "url": "https://u:p@x/mcp"}, "credentials in the URL",
                 id="userinfo"),
    pytest.param({**HTTP, "url": "https://x:99999/mcp"}, "url", id="port"),
    pytest.param({**HTTP, "token_env": "NAOS_LLM_API_KEY"}, "naosd's own settings",
                 id="naos-secret"),
    pytest.param({**HTTP, "token_file": "/t", "token_env": "T"}, "not both", id="two-tokens"),
    pytest.param({**HTTP, "url": "http://tools.example/mcp", "token_env": "T"},
                 "only sent over https", id="token-in-clear"),
    pytest.param({**STDIO, "price_micro": -1}, "micro-dollars from 0", id="negative-price"),
    pytest.param({**STDIO, "tool_prices": ["add=x"]}, "tool price of add", id="tool-price"),
    pytest.param({**STDIO, "tool_prices": ["a b=1"]}, "not a tool name", id="tool-name"),
])
def test_bad_definitions_are_refused_naming_the_field(raw, says) -> None:
    with pytest.raises(InvalidRequest) as caught:
        server_def(raw)
    assert says in caught.value.message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8123/mcp", "http://[::1]:80/mcp",
                                 "http://localhost/mcp", "https://tools.example/mcp"])
def test_a_token_goes_over_https_or_to_this_host(url: str) -> None:
    assert server_def({**HTTP, "url": url, "token_file": "/etc/t"}).token_file == "/etc/t"


def tool(name: object, **extra: object) -> dict[str, object]:
    return {"name": name, "description": f"does {name}",
            "inputSchema": {"type": "object", "properties": {}}, **extra}


def test_a_listing_names_each_tool_for_agents_and_llms() -> None:
    found = listing("calc", [tool("add"), tool("files.read"), tool("a-b")])
    assert [(t.qualified, t.function) for t in found.tools] == [
        ("calc.add", "calc__add"), ("calc.files.read", "calc__files_read"),
        ("calc.a-b", "calc__a-b")]
    spec = found.tools[0].spec()
    assert spec == {"type": "function", "function": {
        "name": "calc__add", "description": "does add",
        "parameters": {"type": "object", "properties": {}}}}
    assert found.by_function("calc__files_read") is found.tools[1]


def test_colliding_or_long_function_names_are_callable_but_not_offered() -> None:
    found = listing("calc", [tool("a.b"), tool("a_b"), tool("x" * 70)])
    assert [t.function for t in found.tools] == [None, None, None]
    assert "shared with another tool" in found.tools[0].note
    assert "over 64 characters" in found.tools[2].note
    assert found.find("a.b") is found.tools[0]  # still callable as calc.a.b


def test_bad_tools_are_skipped_with_their_reason() -> None:
    found = listing("calc", [tool("ok"), tool("ok"), tool("bad name"), tool(None),
                             {"name": "arr", "inputSchema": {"type": "array"}},
                             tool("big", inputSchema={"type": "object",
                                                      "description": "x" * 70_000})])
    assert [t.name for t in found.tools] == ["ok"]
    assert [s.split(":")[0] for s in found.skipped] == ["ok", "'bad name'", "None", "arr",
                                                        "big"]


def test_a_listing_is_bounded() -> None:
    found = listing("many", [tool(f"t{i}") for i in range(MAX_TOOLS + 5)])
    assert len(found.tools) == MAX_TOOLS and len(found.skipped) == 5


@pytest.mark.parametrize(("name", "split"), [
    pytest.param("calc.add", ("calc", "add", False), id="dotted"),
    pytest.param("calc.files.read", ("calc", "files.read", False), id="dotted-tool"),
    pytest.param("calc__files_read", ("calc", "calc__files_read", True), id="function"),
    pytest.param("calc__a__b", ("calc", "calc__a__b", True), id="function-with-sep"),
])
def test_a_called_name_is_split_at_the_servers_end(name, split) -> None:
    assert split_tool(name) == split


@pytest.mark.parametrize("name", ["add", ".add", "__add", "Calc.add", "calc.", "x y.z"])
def test_a_name_of_neither_form_is_an_unknown_tool(name: str) -> None:
    with pytest.raises(UnknownTool):
        split_tool(name)


def test_a_result_is_its_text_blocks() -> None:
    assert result_text([{"type": "text", "text": "a"}, {"type": "image", "mimeType": "i/p"},
                        {"type": "resource_link", "uri": "file:///x"}]) == \
        "a\n[image i/p]\n[resource file:///x]"


def test_a_definition_is_a_frozen_value() -> None:
    d = ServerDef("calc", "stdio", ("/bin/true",))
    with pytest.raises(AttributeError):
        d.name = "other"  # type: ignore[misc]
