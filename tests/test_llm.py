"""The LLM client against a fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from fake_openai import Step, chunk, error, ok, serve_fake_openai

from naosd.broker.llm.client import LlmClient, LlmConfig, estimate_cost_micro, read_key_file
from naosd.errors import (
    ConfigError,
    InvalidRequest,
    LlmBadResponse,
    LlmQuotaExceeded,
    LlmRateLimited,
    LlmTimeout,
    LlmUnavailable,
)


def config(url: str, **kw) -> LlmConfig:
    base = {"model": "fake-1", "api_key": "sk-test-secret", "timeout_s": 10.0,
            "max_retries": 3, "backoff": 0.01, "price_input_per_1k": 1000,
            "price_output_per_1k": 2000}
    return LlmConfig(url, **{**base, **kw})


async def ask(cfg: LlmConfig, prompt: str = "say hello", **kw):
    client = LlmClient(cfg)
    try:
        return await client.complete(prompt, **kw)
    finally:
        await client.aclose()


async def test_success_cost_from_usage_and_key_in_header():
    async with serve_fake_openai() as fake:
        fake.script = [ok("hi there", prompt_tokens=1500, completion_tokens=250)]
        result = await ask(config(fake.url), max_tokens=300)
    assert result.text == "hi there"
    assert (result.input_tokens, result.output_tokens) == (1500, 250)
    assert result.cost_micro == 1500 + 500  # 1.5K x 1000 + 0.25K x 2000
    assert not result.estimated and result.attempts == 1 and result.model == "fake-1"
    assert fake.headers[0]["Authorization"] == "Bearer sk-test-secret"
    sent = fake.requests[0]
    assert sent["model"] == "fake-1" and sent["max_tokens"] == 300
    assert sent["messages"] == [{"role": "user", "content": "say hello"}]
    assert "sk-test" not in repr(config(fake.url))


async def test_429_rate_limited_then_success_honours_retry_after():
    async with serve_fake_openai() as fake:
        fake.script = [error(429, "rate_limit_exceeded", **{"Retry-After": "1"}), ok()]
        result = await ask(config(fake.url))
    assert result.attempts == 2 and result.text == "hello"
    assert result.waited_s == 1.0
    assert fake.times[1] - fake.times[0] >= 1.0  # a lower bound: sleeping guarantees it


async def test_429_rate_limited_every_time_gives_up_after_retries():
    async with serve_fake_openai() as fake:
        fake.script = [error(429, "rate_limit_exceeded")] * 4
        with pytest.raises(LlmRateLimited, match="gave up after 4 attempts"):
            await ask(config(fake.url))
        assert len(fake.requests) == 4


async def test_insufficient_quota_is_not_retried():
    async with serve_fake_openai() as fake:
        fake.script = [error(429, "insufficient_quota", "You exceeded your quota"), ok()]
        with pytest.raises(LlmQuotaExceeded, match="exceeded your quota"):
            await ask(config(fake.url))
        assert len(fake.requests) == 1


async def test_5xx_retried_then_success_and_exhausted():
    async with serve_fake_openai() as fake:
        fake.script = [error(503, "overloaded"), error(500, "boom"), ok()]
        result = await ask(config(fake.url))
        assert result.attempts == 3
        fake.script = [error(502, "bad gateway")] * 2
        with pytest.raises(LlmUnavailable, match="502"):
            await ask(config(fake.url, max_retries=1))


async def test_4xx_is_a_bad_response_not_retried():
    async with serve_fake_openai() as fake:
        fake.script = [error(400, "invalid_request_error", "model not found"), ok()]
        with pytest.raises(LlmBadResponse, match="model not found"):
            await ask(config(fake.url))
        assert len(fake.requests) == 1


async def test_server_down_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(LlmUnavailable, match="cannot reach"):
            await ask(config(f"http://127.0.0.1:{port}/v1", max_retries=2))


async def test_timeout_is_not_retried():
    async with serve_fake_openai() as fake:
        fake.script = [Step(delay_s=3.0, body={}), ok()]
        with pytest.raises(LlmTimeout, match=r"did not answer within 0\.5s"):
            await ask(config(fake.url, timeout_s=0.5))
        assert len(fake.requests) == 1


async def test_a_shorter_caller_deadline_caps_each_attempt():
    async with serve_fake_openai() as fake:
        fake.script = [Step(delay_s=3.0, body={}), ok()]
        client = LlmClient(config(fake.url, timeout_s=10.0))
        try:
            with pytest.raises(LlmTimeout, match=r"did not answer within 0\.3s"):
                await client.complete("hi", timeout_s=0.3)
        finally:
            await client.aclose()


async def test_http_that_does_not_parse_is_a_bad_response():
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nHTTP\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(LlmBadResponse):
            await ask(config(f"http://127.0.0.1:{port}/v1", max_retries=0))


@pytest.mark.parametrize(("raw", "match"), [
    (b"<html>oops</html>", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"choices": []}', "no choices"),
    (b'{"choices": [{"message": {"content": 5}}]}', "no message content"),
])
async def test_malformed_body_is_a_bad_response(raw, match):
    async with serve_fake_openai() as fake:
        fake.script = [Step(raw=raw, headers={"Content-Type": "application/json"})]
        with pytest.raises(LlmBadResponse, match=match):
            await ask(config(fake.url))
        assert len(fake.requests) == 1


async def test_stream_without_usage_settles_a_conservative_estimate():
    prompt = "count to three"
    cfg = config("http://x/v1", stream=True)
    async with serve_fake_openai() as fake:
        fake.script = [Step(stream=[chunk("one, "), chunk("two, "), chunk("three")])]
        result = await ask(config(fake.url, stream=True), prompt, max_tokens=64)
    assert result.text == "one, two, three" and result.estimated
    assert result.input_tokens >= len(prompt.split())
    assert result.output_tokens >= 3
    assert 0 < result.cost_micro <= estimate_cost_micro(cfg, prompt, 64)
    assert fake.requests[0]["stream"] is True
    assert fake.requests[0]["stream_options"] == {"include_usage": True}


async def test_stream_with_usage_uses_it():
    usage = json.dumps({"model": "fake-1", "choices": [],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 2}})
    async with serve_fake_openai() as fake:
        fake.script = [Step(stream=[chunk("a"), chunk("b"), usage])]
        result = await ask(config(fake.url, stream=True))
    assert (result.text, result.input_tokens, result.output_tokens) == ("ab", 11, 2)
    assert not result.estimated and result.cost_micro == 11 + 4


def test_estimate_is_an_upper_bound_on_settled_cost():
    cfg = config("http://x/v1")
    assert estimate_cost_micro(cfg, "héllo", 100) == 1 * (7 + 64) + 2 * 100
    assert estimate_cost_micro(cfg, "x", None) > estimate_cost_micro(cfg, "x", 10)


@pytest.mark.parametrize(("prompt", "max_tokens"), [("", None), ("  ", None), ("x", 0),
                                                    ("x", True), ("x", 10**7)])
async def test_bad_requests_are_refused_before_sending(prompt, max_tokens):
    async with serve_fake_openai() as fake:
        with pytest.raises(InvalidRequest):
            await ask(config(fake.url), prompt, max_tokens=max_tokens)
        assert fake.requests == []


def test_key_file_must_be_private(tmp_path: Path):
    key = tmp_path / "key"
    key.write_text("sk-file\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        read_key_file(key, "llm.api_key_file")
    key.chmod(0o600)
    assert read_key_file(key, "llm.api_key_file") == "sk-file"
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_file(tmp_path / "missing", "llm.api_key_file")


def test_bad_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match="http"):
        LlmConfig("ftp://x", "m")


def test_retry_after_forms():
    from datetime import UTC, datetime

    from naosd.broker.llm.wire import backoff_s, retry_after_s

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_s("2") == 2.0
    assert retry_after_s("Thu, 01 Jan 2026 00:00:05 GMT", now) == 5.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    assert backoff_s(1, 0.5, None) == 0.5 and backoff_s(3, 0.5, None) == 2.0
    assert backoff_s(2, 0.5, 7.0) == 7.0 and backoff_s(30, 1.0, None) == 60.0


def test_from_config_reads_settings_and_env_key(tmp_path: Path):
    from naosd.config import load

    env = {"NAOS_LLM_BASE_URL": "http://127.0.0.1:9/v1/", "NAOS_LLM_MODEL": "m",
           "NAOS_LLM_API_KEY": "sk-env", "NAOS_LLM_PRICE_INPUT_PER_1K": "150",
           "NAOS_LLM_STREAM": "yes"}
    cfg = load(environ=env, uid=1000, home=tmp_path)
    llm = LlmConfig.from_config(cfg)
    assert llm is not None and llm.base_url == "http://127.0.0.1:9/v1"
    assert (llm.model, llm.api_key, llm.price_input_per_1k) == ("m", "sk-env", 150)
    assert llm.stream is True
    assert cfg.to_toml_dict()["llm"]["api_key"] == "(set)"
    assert "sk-env" not in repr(cfg) and "sk-env" not in json.dumps(llm.describe())
    assert LlmConfig.from_config(load(environ={}, uid=1000, home=tmp_path)) is None


def test_stream_parser_handles_split_lines_comments_and_truncation():
    from naosd.broker.llm.wire import StreamParser

    parser = StreamParser()
    data = (f": keep-alive\n\ndata: {chunk('he')}\n\ndata: {chunk('llo')}\n\n"
            "data: [DONE]\n\n").encode()
    for i in range(0, len(data), 7):  # arbitrary network splits
        parser.feed(data[i:i + 7])
    done = parser.result()
    assert (done.text, done.model, done.input_tokens) == ("hello", "fake-1", None)
    cut = StreamParser()
    cut.feed(f"data: {chunk('x')}\n".encode())
    with pytest.raises(LlmBadResponse, match="without \\[DONE\\]"):
        cut.result()
    with pytest.raises(LlmBadResponse, match="not JSON"):
        StreamParser().feed(b"data: {nope\n")


def test_secrets_are_never_rendered(tmp_path: Path):
    from naosd.config import load, render_default_config

    env = {"NAOS_LLM_API_KEY": "sk-hidden-1", "NAOS_AXIS_API_KEY": "ax-hidden-2"}
    cfg = load(environ=env, uid=1000, home=tmp_path)
    text = render_default_config(cfg)
    shown = json.dumps(cfg.to_toml_dict())
    for secret in env.values():
        assert secret not in text and secret not in shown and secret not in repr(cfg)
    assert '# api_key = "(set)"' in text  # commented out: saving this file is safe
    saved = tmp_path / "naosd.toml"
    saved.write_text(text)
    assert load(config_file=saved, environ={}, uid=1000, home=tmp_path).llm_api_key == ""
