"""The span of each charged call (:meth:`naosd.broker.spend.Spender.charge`),
named and described after OpenTelemetry's GenAI semantic conventions where
they apply: ``chat {model}`` for an agent's LLM call, ``execute_tool {tool}``
for an MCP tool call, and naos's own ``broker.task {route}:{handler}`` for
a broker task.
Every one carries the trust verdict, the reservation and the cost in µ$.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from naosd import telemetry

if TYPE_CHECKING:
    from naosd.broker.spend import Charge, Receipt, Spent

GEN_AI_SYSTEM: Final = "openai"  # naos speaks the OpenAI-compatible API to every server


def open_span(agent: str | None, charge: Charge) -> telemetry.OpenSpan:
    """The call's span, not yet entered (the no-op one when tracing is off)."""
    match charge.audit_type:
        case "llm.chat":
            span = telemetry.span(f"chat {charge.handler}", "client")
            attributes: dict[str, Any] = {
                "gen_ai.operation.name": "chat", "gen_ai.system": GEN_AI_SYSTEM,
                "gen_ai.request.model": charge.handler,
                "gen_ai.request.max_tokens": charge.detail.get("max_tokens_asked")}
        case "tool.call":
            span = telemetry.span(f"execute_tool {charge.handler}")
            attributes = {"gen_ai.operation.name": "execute_tool",
                          "gen_ai.tool.name": charge.handler,
                          "naos.tool.server": charge.detail.get("server")}
        case _:
            span = telemetry.span(f"broker.task {charge.kind}:{charge.handler}")
            attributes = {"naos.broker.route": charge.kind, "naos.broker.handler": charge.handler}
    if span.recording:
        span.update({**attributes, "naos.agent": agent, "naos.task_id": charge.task_id})
    return span


def settled(span: telemetry.Span, spent: Spent, receipt: Receipt) -> None:
    """What the call cost and, for an LLM answer, its usage."""
    if not span.recording:
        return
    detail = spent.detail
    span.update({
        "naos.trust.verdict": receipt.verdict, "naos.budget.reserved_micro": receipt.granted_micro,
        "naos.cost_micro_usd": receipt.cost_micro, "naos.usage.estimated": spent.estimated,
        "naos.wasm.fuel_used": detail.get("fuel_used"),
        "gen_ai.response.model": detail.get("model"),
        "gen_ai.usage.input_tokens": detail.get("input_tokens"),
        "gen_ai.usage.output_tokens": detail.get("output_tokens"),
        "gen_ai.response.finish_reasons": [str(detail["finish_reason"])]
        if detail.get("finish_reason") else None})
