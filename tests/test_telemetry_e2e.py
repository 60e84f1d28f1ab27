"""Traces of the real daemon, received over OTLP/HTTP by a collector written
here (decoded with opentelemetry-proto): an operator's ``naosctl run`` that
continues the caller's W3C trace, an agent that asks the LLM (the fake
OpenAI-compatible server of tests/fake_openai.py) and another agent, which
streams from the LLM: one trace, parent and child as the calls were made, the
GenAI attributes on the LLM spans, the trace context sent to the LLM server."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fake_openai import FakeOpenAI, answer, serve_fake_openai, streamed
from harness import Naosd, clean_env, reap, start_naosd
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

CALLER = '''
async def handle(message, ctx):
    r = await ctx.llm.chat([{"role": "user", "content": "plan"}], max_tokens=20)
    sub = await ctx.ask("helper", {"n": message["n"]})
    return {"text": r.text, "sub": sub}
'''
HELPER = '''
async def handle(message, ctx):
    text = ""
    async for piece in ctx.llm.stream([{"role": "user", "content": "help"}], max_tokens=10):
        text += piece
    return {"n": message["n"], "text": text}
'''


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    status: int
    resource: dict[str, Any] = field(default_factory=dict)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class Collector:
    """An OTLP/HTTP traces endpoint: decodes every export into :class:`Span`s."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.url = ""
        self.content_types: set[str] = set()

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.content_types.add(request.headers.get("Content-Type", ""))
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            resource = _attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                self.spans.extend(Span(
                    s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                    _attributes(s.attributes), s.status.code, resource) for s in ss.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


@dataclass
class Servers:
    llm: FakeOpenAI
    collector: Collector


@pytest.fixture
def servers() -> Iterator[Servers]:
    """The fake LLM and the collector on their own event loop in a thread."""
    ready = threading.Event()
    holder: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        collector = Collector()
        app = web.Application()
        app.router.add_post("/v1/traces", collector.traces)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        collector.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with serve_fake_openai() as fake:
                holder["servers"] = Servers(fake, collector)
                ready.set()
                await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield holder["servers"]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def daemon_env(base: Path, fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                     XDG_CONFIG_HOME=str(base / "xdg-config"), NAOS_LLM_BASE_URL=fake.url,
                     NAOS_LLM_MODEL="fake-1", NAOS_LLM_PRICE_INPUT_PER_1K="1000",
                     NAOS_LLM_PRICE_OUTPUT_PER_1K="2000", NAOS_LLM_MAX_RETRIES="0", **extra)


@pytest.fixture
def traced(base: Path, servers: Servers) -> Iterator[Naosd]:
    env = daemon_env(base, servers.llm, NAOS_TELEMETRY_ENABLED="true",
                     NAOS_TELEMETRY_OTLP_ENDPOINT=servers.collector.url,
                     OTEL_BSP_SCHEDULE_DELAY="100")  # the SDK's batch delay: spans come soon
    daemon = start_naosd(base, env=env)
    try:
        yield daemon
    finally:
        assert not reap(daemon)


def ok(d: Naosd, *args: str, env: dict[str, str] | None = None) -> Any:
    out = d.ctl(*args, "--json") if env is None else _ctl_env(d, env, *args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def _ctl_env(d: Naosd, env: dict[str, str], *args: str) -> Any:
    from harness import naosctl

    return naosctl("--socket", str(d.socket), *args, env={**d.env, **env})


def answer_fine(fake: FakeOpenAI) -> None:
    """Every request is answered "fine" (streamed when asked to), usage 11 in, 4 out."""
    fake.answer = lambda body: (streamed(["fi", "ne"], usage=(11, 4)) if body.get("stream")
                                else answer("fine", usage=(11, 4)))


def create_agents(d: Naosd, base: Path) -> None:
    for name, code in (("caller", CALLER), ("helper", HELPER)):
        path = base / f"{name}.py"
        path.write_text(code)
        ok(d, "create", name, "--source", str(path))
        d.ctl("axis", "register", name, "--t-score", "900", "--c-score", "950", check=True)


def wait_spans(collector: Collector, names: list[str], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = [s.name for s in collector.spans]
        if all(have.count(n) >= names.count(n) for n in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"spans {names} not all received in {timeout}s: "
                         f"{[s.name for s in collector.spans]}")


def test_an_agent_chain_is_one_trace_with_genai_spans(traced: Naosd, servers: Servers,
                                                      base: Path) -> None:
    fake, collector = servers.llm, servers.collector
    answer_fine(fake)
    create_agents(traced, base)
    result = ok(traced, "run", "caller", "--input", '{"n": 7}',
                env={"TRACEPARENT": TRACEPARENT})
    assert result["output"] == {"text": "fine", "sub": {"n": 7, "text": "fine"}}

    wanted = ["agent.run", "invoke_agent caller", "invoke_agent helper", "chat fake-1",
              "chat fake-1"]
    wait_spans(collector, wanted)
    run = collector.named("agent.run")[-1]
    chain = [s for s in collector.spans if s.trace_id == run.trace_id]
    assert run.trace_id == TRACE_ID  # the caller's trace, continued
    assert run.parent_id == PARENT_ID
    assert run.kind == 2  # SERVER
    assert run.attributes["rpc.method"] == "agent.run"
    assert run.resource["service.name"] == "naosd"

    outer = only(chain, "invoke_agent caller")
    inner = only(chain, "invoke_agent helper")
    assert outer.parent_id == run.span_id
    assert inner.parent_id == outer.span_id  # ctx.ask: the callee is the caller's child
    assert outer.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert outer.attributes["gen_ai.agent.name"] == "caller"
    assert inner.attributes["naos.caller"] == "caller"
    chats = {s.parent_id: s for s in chain if s.name == "chat fake-1"}
    assert set(chats) == {outer.span_id, inner.span_id}  # each agent's own LLM call
    for chat in chats.values():
        assert chat.kind == 3  # CLIENT
        attrs = chat.attributes
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.system"] == "openai"
        assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "fake-1"
        assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (
            11, 4)
        assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
        assert attrs["naos.cost_micro_usd"] == 11 + 8  # 11 in at 1000/1K, 4 out at 2000/1K
        assert attrs["naos.trust.verdict"] and attrs["naos.budget.reserved_micro"] >= 19
    assert chats[outer.span_id].attributes["gen_ai.request.max_tokens"] == 20

    # The LLM server was told the trace: each request's parent is its chat span.
    sent = {h.get("Traceparent", h.get("traceparent")) for h in fake.headers}
    assert sent == {f"00-{TRACE_ID}-{c.span_id}-01" for c in chats.values()}
    assert collector.content_types == {"application/x-protobuf"}


def only(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_errors_broker_tasks_and_a_bad_traceparent(
        traced: Naosd, servers: Servers) -> None:
    missing = _ctl_env(traced, {"TRACEPARENT": TRACEPARENT}, "run", "nobody", "--input", "1")
    assert missing.returncode == 4
    wait_spans(servers.collector, ["agent.run"])
    span = servers.collector.named("agent.run")[-1]
    assert span.status == 2 and span.attributes["error.type"] == "not_found"  # ERROR

    task = ok(traced, "broker", "execute", "sha256 of: x")
    name = f"broker.task skill:{task['handler']}"
    wait_spans(servers.collector, ["broker.execute", name])
    request, charged = servers.collector.named("broker.execute")[-1], servers.collector.named(
        name)[-1]
    assert charged.parent_id == request.span_id and charged.trace_id == request.trace_id
    assert charged.attributes["naos.broker.route"] == "skill"
    assert charged.attributes["naos.cost_micro_usd"] == task["cost_micro"]
    assert charged.attributes["naos.task_id"] == task["task_id"]

    for bad in ("nonsense", f"00-{'0' * 32}-{PARENT_ID}-01", f"00-{TRACE_ID}-{PARENT_ID}"):
        out = _ctl_env(traced, {"TRACEPARENT": bad}, "ping")
        assert out.returncode == 2, out.stderr  # invalid_request, naming the field
        assert "traceparent" in out.stderr and "W3C" in out.stderr


def test_without_telemetry_nothing_is_exported_or_sent(base: Path, servers: Servers) -> None:
    daemon = start_naosd(base, env=daemon_env(base, servers.llm))
    answer_fine(servers.llm)
    try:
        create_agents(daemon, base)
        result = ok(daemon, "run", "caller", "--input", '{"n": 1}',
                    env={"TRACEPARENT": TRACEPARENT})
        assert result["output"]["sub"]["n"] == 1
        assert servers.llm.headers and not any(
            "traceparent" in {k.lower() for k in h} for h in servers.llm.headers)
        assert "opentelemetry" not in daemon.log()
    finally:
        assert not reap(daemon)
    assert servers.collector.spans == []


def test_a_dashboard_request_continues_its_traceparent_header(traced: Naosd,
                                                              servers: Servers) -> None:
    info = json.loads(traced.ctl("dashboard", "--json", check=True).stdout)
    host, port = info["url"].split("//", 1)[1].rstrip("/").split(":")
    token = info["login_url"].split("token=", 1)[1]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/api/v1/supervisors", headers={
            "Authorization": f"Bearer {token}", "traceparent": TRACEPARENT})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    wait_spans(servers.collector, ["supervisor.list"])
    span = servers.collector.named("supervisor.list")[-1]
    assert (span.trace_id, span.parent_id, span.kind) == (TRACE_ID, PARENT_ID, 2)
    assert span.attributes["naos.transport"] == "http"


def test_a_sagas_steps_continue_the_trace_that_started_it(traced: Naosd, servers: Servers,
                                                          base: Path) -> None:
    path = base / "plain.py"
    path.write_text("def handle(message, ctx):\n    return message\n")
    ok(traced, "create", "plain", "--source", str(path))
    ok(traced, "saga", "create", "pay")
    for step in ("reserve", "charge"):
        ok(traced, "saga", "add-step", "pay", step, "--agent", "plain")
    run = ok(traced, "saga", "run", "pay", "--input", '{"order": 1}',
             env={"TRACEPARENT": TRACEPARENT})
    assert run["status"] == "completed"

    wait_spans(servers.collector, ["saga.run", "saga.step plain", "saga.step plain",
                                   "invoke_agent plain", "invoke_agent plain"])
    spans = [s for s in servers.collector.spans if s.trace_id == TRACE_ID]
    start = only(spans, "saga.run")
    steps = [s for s in spans if s.name == "saga.step plain"]
    assert [s.parent_id for s in steps] == [start.span_id] * 2
    assert {s.attributes["naos.run_id"] for s in steps} == {run["run_id"]}
    runs = [s for s in spans if s.name == "invoke_agent plain"]
    assert sorted(s.parent_id for s in runs) == sorted(s.span_id for s in steps)


TOOLER = '''
async def handle(message, ctx):
    return await ctx.tools.call("calc.add", {"a": 2, "b": 3})
'''


def test_an_agents_tool_call_is_an_execute_tool_span(traced: Naosd, servers: Servers,
                                                     base: Path) -> None:
    from mcp_tool_servers import stdio_command, write_server

    ok(traced, "mcp", "add", "calc", "--command", stdio_command(write_server(base)),
       "--price-micro", "100")
    deadline = time.monotonic() + 90
    while not any(s["name"] == "calc" and s["state"] == "up"
                  for s in ok(traced, "mcp", "list")):
        assert time.monotonic() < deadline, traced.log()[-3000:]
        time.sleep(0.2)
    path = base / "tooler.py"
    path.write_text(TOOLER)
    ok(traced, "create", "tooler", "--source", str(path))
    traced.ctl("axis", "register", "tooler", "--t-score", "900", "--c-score", "950", check=True)
    result = ok(traced, "run", "tooler", "--input", "{}", env={"TRACEPARENT": TRACEPARENT})
    assert result["output"]["text"] == "5"

    wait_spans(servers.collector, ["invoke_agent tooler", "execute_tool calc.add"])
    spans = [s for s in servers.collector.spans if s.trace_id == TRACE_ID]
    run, tool = only(spans, "invoke_agent tooler"), only(spans, "execute_tool calc.add")
    assert tool.parent_id == run.span_id
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
    assert tool.attributes["gen_ai.tool.name"] == "calc.add"
    assert tool.attributes["naos.tool.server"] == "calc"
    assert tool.attributes["naos.cost_micro_usd"] == 100
    assert tool.attributes["naos.agent"] == "tooler"
