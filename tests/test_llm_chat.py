"""The chat request, its bounds and its sizing (pure), the stream parser's
tool-call assembly, and the client's chat calls against a fake
OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fake_openai import answer, error, serve_fake_openai, streamed, tool_call
from hypothesis import given
from hypothesis import strategies as st

from naosd.broker.chat import MIN_OUTPUT_TOKENS, Plan
from naosd.broker.llm.chat_request import (
    MAX_TOOLS,
    check_chat,
    compact,
    prompt_token_bound,
    split_tool_calls,
)
from naosd.broker.llm.client import LlmClient, LlmConfig
from naosd.broker.llm.wire import (
    CHAT_OVERHEAD_TOKENS,
    StreamParser,
    cost_micro,
    max_tokens_within,
    parse_chat,
)
from naosd.errors import InvalidRequest, LlmBadResponse, LlmTimeout, LlmUnavailable

HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


# -- the request -----------------------------------------------------------------------

@pytest.mark.parametrize(("params", "match"), [
    pytest.param({}, "messages: a non-empty list", id="no-messages"),
    pytest.param({"messages": "hi"}, "messages: a non-empty list", id="messages-text"),
    pytest.param({"messages": HI * 1025}, r"1025 messages \(limit 1024\)", id="too-many"),
    pytest.param({"messages": [{"role": "user", "content": "x" * (1 << 20)}]},
                 r"bytes of JSON \(limit 1048576\)", id="huge"),
    pytest.param({"messages": HI, "n": 2}, r"unknown option\(s\) n", id="unknown-option"),
    pytest.param({"messages": ["hi"]}, r"messages\[0\]: a map", id="message-not-map"),
    pytest.param({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]\.role",
                 id="role"),
    pytest.param({"messages": [{"role": "user", "content": "x", "tool_call_id": "1"}]},
                 r"unknown key\(s\) tool_call_id for a user message", id="user-key"),
    pytest.param({"messages": [{"role": "user"}]}, r"messages\[0\]\.content: text",
                 id="no-content"),
    pytest.param({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content",
                 id="content-number"),
    pytest.param({"messages": [{"role": "tool", "content": "42"}]},
                 r"messages\[0\]\.tool_call_id: non-empty text", id="tool-no-id"),
    pytest.param({"messages": [{"role": "assistant", "content": None,
                                "tool_calls": [{"id": "1", "function": {"name": "a b"}}]}]},
                 r"messages\[0\]\.tool_calls\[0\]\.function\.name", id="call-name"),
    pytest.param({"messages": HI, "tools": []}, "tools: a list of 1 to", id="tools-empty"),
    pytest.param({"messages": HI, "tools": [TOOL] * 2}, "offered twice", id="tools-dup"),
    pytest.param({"messages": HI, "tools": [{"type": "function", "function": {
        "name": "x", "parameters": "schema"}}]}, r"tools\[0\]\.function\.parameters",
                 id="tool-params"),
    pytest.param({"messages": HI, "tools": [{"type": "function", "function": {
        "name": "x", "code": 1}}]}, r"unknown key\(s\) code", id="tool-key"),
    pytest.param({"messages": HI, "tools": [{"type": "function", "function": {
        "name": f"t{i}"}} for i in range(MAX_TOOLS + 1)]}, "tools: a list of 1 to 128",
                 id="too-many-tools"),
    pytest.param({"messages": HI, "tool_choice": "required"}, "'required' needs tools",
                 id="choice-no-tools"),
    pytest.param({"messages": HI, "tool_choice": "sometimes", "tools": [TOOL]},
                 "tool_choice: one of none, auto, required", id="choice-word"),
    pytest.param({"messages": HI, "response_format": {"type": "xml"}},
                 "response_format.type", id="format"),
    pytest.param({"messages": HI, "response_format": {"type": "json_schema"}},
                 "response_format.json_schema", id="format-schema"),
    pytest.param({"messages": HI, "temperature": True}, "temperature", id="temperature-bool"),
    pytest.param({"messages": HI, "top_p": 1.5}, "top_p: a number from 0 to 1", id="top-p"),
    pytest.param({"messages": HI, "stop": ["a"] * 5}, "stop: a string or a list of 1 to 4",
                 id="stop-many"),
    pytest.param({"messages": HI, "seed": 2**63}, "seed: a whole number", id="seed"),
    pytest.param({"messages": HI, "max_tokens": 1.5}, "max_tokens: a whole number",
                 id="max-tokens"),
    pytest.param({"messages": HI, "model": ""}, "model: a non-empty", id="model"),
])
def test_bad_requests_are_refused_naming_the_field(params, match) -> None:
    with pytest.raises(InvalidRequest, match=match):
        check_chat(params)


def test_a_full_request_is_kept_as_given() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "find x"}], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("lookup", {"q": 1})]},
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    ]
    params = {"messages": messages, "tools": [TOOL], "tool_choice": {
        "type": "function", "function": {"name": "lookup"}}, "temperature": 0,
        "top_p": 0.5, "stop": "END", "seed": -1, "max_tokens": 9, "model": "m",
        "response_format": {"type": "json_object"}}
    request = check_chat(params)
    assert list(request.messages) == messages
    assert request.options == {k: params[k] for k in ("tools", "tool_choice", "temperature",
                                                       "top_p", "stop", "seed",
                                                       "response_format")}
    assert (request.max_tokens, request.model, request.tool_names) == (9, "m", {"lookup"})


def test_the_prompt_bound_covers_the_bytes_and_the_template() -> None:
    plain = check_chat({"messages": [{"role": "user", "content": "héllo " * 100}]})
    text = "héllo " * 100
    assert prompt_token_bound(plain) >= len(text.encode()) + CHAT_OVERHEAD_TOKENS
    with_tools = check_chat({"messages": list(plain.messages), "tools": [TOOL]})
    assert prompt_token_bound(with_tools) >= prompt_token_bound(plain) + 2 * len(
        compact([TOOL]).encode())


def test_invented_tools_and_broken_arguments_are_set_apart() -> None:
    calls = [tool_call("lookup", {"q": 1}), tool_call("rm_rf", {}, "c2"),
             {"id": "c3", "type": "function", "function": {"name": "lookup",
                                                          "arguments": "{oops"}},
             {"id": "c4", "type": "function", "function": {"name": "lookup",
                                                          "arguments": "[1]"}}]
    valid, invalid = split_tool_calls(calls, frozenset({"lookup"}))
    assert valid == calls[:1]
    assert [(i["id"], i["reason"]) for i in invalid] == [
        ("c2", "the model called 'rm_rf', which is not a tool it was offered (lookup)"),
        ("c3", "the arguments of 'lookup' are not JSON"),
        ("c4", "the arguments of 'lookup' are not a JSON object")]
    _, none_offered = split_tool_calls(calls[:1], frozenset())
    assert "no tools were offered" in none_offered[0]["reason"]


# -- sizing: a call cannot cost more than it was granted ---------------------------------

@given(granted=st.integers(0, 10**9), prompt=st.integers(0, 10**6),
       asked=st.integers(1, 10**6), price_in=st.integers(0, 10**6),
       price_out=st.integers(0, 10**6))
def test_max_tokens_within_a_grant_never_costs_more_and_is_the_most(
        granted, prompt, asked, price_in, price_out) -> None:
    m = max_tokens_within(granted, prompt, asked, price_in, price_out)
    assert 0 <= m <= asked
    if m:
        assert cost_micro(prompt, m, price_in, price_out) <= granted
    if 0 < m < asked:
        assert cost_micro(prompt, m + 1, price_in, price_out) > granted


@given(prompt=st.integers(1, 10**5), asked=st.integers(1, 10**5),
       price_in=st.integers(0, 10**5), price_out=st.integers(1, 10**5), share=st.floats(0, 1))
def test_any_grant_between_floor_and_reservation_leaves_room_to_answer(
        prompt, asked, price_in, price_out, share) -> None:
    plan = Plan(check_chat({"messages": HI}), "m", prompt, asked, price_in, price_out)
    granted = plan.floor + int(share * (plan.reservation - plan.floor))
    m = plan.max_tokens(granted)
    assert min(asked, MIN_OUTPUT_TOKENS) <= m <= asked
    assert cost_micro(prompt, m, price_in, price_out) <= granted
    assert plan.max_tokens(plan.reservation) == asked


def test_with_zero_prices_nothing_shrinks() -> None:
    plan = Plan(check_chat({"messages": HI}), "m", 100, 300, 0, 0)
    assert (plan.reservation, plan.floor, plan.max_tokens(0)) == (0, 0, 300)


# -- the wire ------------------------------------------------------------------------------

def test_an_answer_with_tool_calls_and_no_content_parses() -> None:
    body = answer(None, tool_calls=[{"id": "x", "type": "function", "function": {
        "name": "lookup", "arguments": {"q": 1}}}], usage=None, finish_reason="tool_calls").body
    got = parse_chat(json.dumps(body).encode())
    assert got.content is None and got.finish_reason == "tool_calls"
    assert got.tool_calls == ({"id": "x", "type": "function", "function": {
        "name": "lookup", "arguments": '{"q": 1}'}},)  # an object made text
    assert (got.input_tokens, got.output_tokens) == (None, None)
    with pytest.raises(LlmBadResponse, match="no message content"):
        parse_chat(json.dumps(answer(None).body).encode())


FRAGMENTS = [{"index": 0, "id": "call_a", "type": "function",
              "function": {"name": "look", "arguments": ""}},
             {"index": 1, "id": "call_b", "function": {"name": "other", "arguments": "{}"}},
             {"index": 0, "function": {"name": "up", "arguments": '{"q": "é'}},
             {"index": 0, "function": {"arguments": '"}'}}]


@given(cuts=st.lists(st.integers(1, 40), max_size=60))
def test_tool_call_fragments_come_together_however_the_bytes_are_split(cuts) -> None:
    payloads = streamed(["Hel", "lo"], tool_fragments=FRAGMENTS, usage=(3, 4)).stream
    data = "".join(f"data: {p}\n\n" for p in [*payloads, "[DONE]"]).encode()
    parser, pieces, at = StreamParser(), [], 0
    for size in [*cuts, len(data)]:
        pieces += parser.feed(data[at:at + size])
        at += size
    got = parser.answer()
    assert pieces == ["Hel", "lo"] and got.content == "Hello"
    assert [c["function"] for c in got.tool_calls] == [
        {"name": "lookup", "arguments": '{"q": "é"}'}, {"name": "other", "arguments": "{}"}]
    assert [c["id"] for c in got.tool_calls] == ["call_a", "call_b"]
    assert (got.finish_reason, got.input_tokens, got.output_tokens) == ("tool_calls", 3, 4)
    assert parser.output_bytes == len(b"Hello") + sum(
        len(s.encode()) for f in FRAGMENTS for s in (f.get("id", ""), f["function"].get(
            "name", ""), f["function"]["arguments"]))


# -- the client ------------------------------------------------------------------------------

def config(url: str, **kw) -> LlmConfig:
    base = {"model": "fake-1", "timeout_s": 10.0, "max_retries": 3, "backoff": 0.01,
            "price_input_per_1k": 1000, "price_output_per_1k": 2000}
    return LlmConfig(url, **{**base, **kw})


async def test_a_chat_sends_the_options_and_retries_like_complete() -> None:
    request = check_chat({"messages": HI, "tools": [TOOL], "stop": ["x"], "model": "fake-2"})
    async with serve_fake_openai() as fake:
        fake.script = [error(503, "overloaded"), answer("hey", usage=(4, 2))]
        client = LlmClient(config(fake.url))
        try:
            got = await client.chat(request, max_tokens=33, deadline=time.monotonic() + 10)
        finally:
            await client.aclose()
    assert (got.content, got.attempts, got.input_tokens) == ("hey", 2, 4)
    sent = fake.requests[1]
    assert sent == {"model": "fake-2", "messages": HI, "tools": [TOOL], "stop": ["x"],
                    "max_tokens": 33}


async def test_a_retry_the_deadline_cannot_wait_for_is_not_made() -> None:
    async with serve_fake_openai() as fake:
        fake.script = [error(503, "overloaded", **{"Retry-After": "5"}), answer()]
        client = LlmClient(config(fake.url))
        started = time.monotonic()
        try:
            with pytest.raises(LlmUnavailable, match="not retried: the caller's deadline"):
                await client.chat(check_chat({"messages": HI}), max_tokens=5,
                                  deadline=time.monotonic() + 1.0)
        finally:
            await client.aclose()
        assert len(fake.requests) == 1 and time.monotonic() - started < 5


async def test_a_stream_cut_after_its_first_piece_is_never_sent_again() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        piece = b'data: {"choices": [{"delta": {"content": "half"}}]}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()
        writer.close()
        served.append(1)

    served: list[int] = []
    pieces: list[str] = []

    async def on_chunk(text: str, size: int) -> None:
        pieces.append(text)

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = LlmClient(config(f"http://127.0.0.1:{port}/v1"))
    try:
        async with server:
            with pytest.raises(LlmBadResponse, match="broke off"):
                await client.chat_stream(check_chat({"messages": HI}), max_tokens=5,
                                         deadline=time.monotonic() + 10, on_chunk=on_chunk)
    finally:
        await client.aclose()
    assert served == [1] and "half" in pieces


async def test_a_stream_slower_than_the_deadline_is_a_timeout() -> None:
    async with serve_fake_openai() as fake:
        fake.script = [streamed(["a", "b", "c"], chunk_delay_s=0.6)]
        client = LlmClient(config(fake.url))
        seen: list[str] = []

        async def on_chunk(text: str, size: int) -> None:
            seen.append(text)

        try:
            with pytest.raises(LlmTimeout):
                await client.chat_stream(check_chat({"messages": HI}), max_tokens=5,
                                         deadline=time.monotonic() + 1.0, on_chunk=on_chunk)
        finally:
            await client.aclose()
    assert "a" in seen and "c" not in seen
