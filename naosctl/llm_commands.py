"""naosctl llm: check the LLM configuration with one prompt."""

from __future__ import annotations

import click

from naosctl import render
from naosctl import render_trust as show
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx


@cli.group()
def llm() -> None:
    """The LLM naosd falls back to (remote, or the embedded local one)."""


@llm.command("ask")
@click.argument("prompt")
@click.option("--max-tokens", type=click.IntRange(1, 1_000_000), help="completion limit")
@json_option
@pass_ctx
@handle_errors()
def llm_ask(c: Ctx, prompt: str, max_tokens: int | None, as_json: bool) -> None:
    """Send PROMPT to the LLM; print the answer, tokens and cost."""
    result = c.client.call("llm.complete", prompt=prompt, max_tokens=max_tokens,
                           timeout=c.timeout)  # naosd waits for the local LLM as long as we do
    click.echo(render.to_json(result) if as_json else show.llm_result(result))


@llm.command("status")
@json_option
@pass_ctx
@handle_errors()
def llm_status(c: Ctx, as_json: bool) -> None:
    """Which LLM naosd uses and the local server's state (crashes, log)."""
    _status(c, "llm.status", as_json)


@llm.command("restart")
@json_option
@pass_ctx
@handle_errors()
def llm_restart(c: Ctx, as_json: bool) -> None:
    """Restart the local LLM server: forget its crashes, start it again."""
    _status(c, "llm.restart", as_json)


def _status(c: Ctx, method: str, as_json: bool) -> None:
    result = c.client.call(method)
    click.echo(render.to_json(result) if as_json else show.llm_status(result))
