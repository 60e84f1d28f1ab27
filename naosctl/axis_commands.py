"""naosctl axis: the trust gate's local registry, AXIS lookups, cache and policy."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import click

from naosctl import render
from naosctl import render_trust as show
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx

SCORE = click.IntRange(0, 1000)
RATINGS = ("AAA", "AA", "A", "BBB", "BB", "D")


def _out(as_json: bool, result: Any, text: str) -> None:
    click.echo(render.to_json(result) if as_json else text)


@cli.group()
def axis() -> None:
    """Trust gate: AXIS scores, the local registry, cache and policy."""


@axis.command("register")
@click.argument("agent")
@click.option("--auid", help="the agent's AXIS id (default: local-only local:AGENT)")
@click.option("--t-score", type=SCORE, help="trust score set locally (works offline)")
@click.option("--c-score", type=SCORE, help="credit score set locally (with --t-score)")
@json_option
@pass_ctx
@handle_errors()
def axis_register(c: Ctx, agent: str, auid: str | None, t_score: int | None,
                  c_score: int | None, as_json: bool) -> None:
    """Register AGENT with an AUID and/or local scores."""
    if (t_score is None) != (c_score is None):
        raise click.UsageError("give both --t-score and --c-score, or neither")
    reg = c.client.call("axis.register", agent=agent, auid=auid, t_score=t_score,
                        c_score=c_score)
    scores = (f", T-Score {reg['t_score']}, C-Score {reg['c_score']}"
              if reg["t_score"] is not None else "")
    _out(as_json, reg, f"registered {reg['agent']}: AUID {reg['auid']}{scores}")


@axis.command("status")
@click.argument("agent")
@json_option
@pass_ctx
@handle_errors()
def axis_status(c: Ctx, agent: str, as_json: bool) -> None:
    """AGENT's scores, tier, rating, cap and whether a task would pass."""
    result = c.client.call("axis.status", agent=agent)
    _out(as_json, result, show.axis_status(result))


@axis.command("list")
@json_option
@pass_ctx
@handle_errors()
def axis_list(c: Ctx, as_json: bool) -> None:
    """Every registered agent: AUID and local scores."""
    rows = c.client.call("axis.list")
    _out(as_json, rows, "\n".join(
        f"{r['agent']:<20} {r['auid']:<40} t {r['t_score'] if r['t_score'] is not None else '-'}"
        f"  c {r['c_score'] if r['c_score'] is not None else '-'}" for r in rows)
        or "no registrations")


@axis.command("unregister")
@click.argument("agent")
@json_option
@pass_ctx
@handle_errors()
def axis_unregister(c: Ctx, agent: str, as_json: bool) -> None:
    """Delete AGENT's registration (it is gated as unregistered from now on)."""
    result = c.client.call("axis.unregister", agent=agent)
    _out(as_json, result, f"{agent}: unregistered")


@axis.command("verify")
@click.argument("auid")
@json_option
@pass_ctx
@handle_errors()
def axis_verify(c: Ctx, auid: str, as_json: bool) -> None:
    """Ask AXIS about AUID now (falls back to the cache and local registry)."""
    result = c.client.call("axis.verify", auid=auid)
    _out(as_json, result, show.axis_verify(result))
    if result["record"] is None:
        raise SystemExit(1)


@axis.command("cache")
@click.option("--clear", is_flag=True, help="drop every cached AXIS answer")
@json_option
@pass_ctx
@handle_errors()
def axis_cache(c: Ctx, clear: bool, as_json: bool) -> None:
    """List the cached AXIS answers (age, freshness), or clear them."""
    result = c.client.call("axis.cache", clear=clear)
    _out(as_json, result, show.axis_cache(result))


@axis.command("check")
@click.argument("agent", required=False)
@click.option("--cost", "cost", default="0", help="task cost in dollars, e.g. 0.25")
@json_option
@pass_ctx
@handle_errors()
def axis_check(c: Ctx, agent: str | None, cost: str, as_json: bool) -> None:
    """Run the trust gate for a task of AGENT costing --cost (audited)."""
    result = c.client.call("trust.check", agent=agent, cost_micro=_micro(cost, "--cost"))
    _out(as_json, result, f"allowed: {result['reason']}")


@axis.group("policy")
def policy() -> None:
    """Minimum tier, T-Score and rating, and per-task caps by rating."""


def _micro(text: str, what: str) -> int:
    try:
        amount = Decimal(text.strip().lstrip("$").replace(",", "")) * 1_000_000
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not an amount in dollars",
                                 param_hint=what) from None
    if amount < 0 or amount != amount.to_integral_value():
        raise click.BadParameter(f"{text!r}: dollars >= 0, at most 6 decimals",
                                 param_hint=what)
    return int(amount)


def _caps(items: tuple[str, ...]) -> dict[str, int | None] | None:
    if not items:
        return None
    caps: dict[str, int | None] = {}
    for item in items:
        rating, sep, amount = item.partition("=")
        if not sep or rating.upper() not in RATINGS:
            raise click.BadParameter(f"{item!r}: write RATING=DOLLARS, e.g. BB=1 or AAA=none "
                                     f"(ratings: {', '.join(RATINGS)})", param_hint="--cap")
        none = amount.strip().lower() in ("none", "unlimited")
        caps[rating.upper()] = None if none else _micro(amount, "--cap")
    return caps


@policy.command("set")
@click.option("--agent", help="set AGENT's override instead of the global policy")
@click.option("--min-tier", type=click.Choice(["T1", "T2", "T3", "T4", "T5"],
                                              case_sensitive=False))
@click.option("--min-t-score", type=SCORE)
@click.option("--min-rating", type=click.Choice(RATINGS, case_sensitive=False))
@click.option("--cap", "caps", multiple=True, metavar="RATING=DOLLARS",
              help="per-task cap for a rating (repeatable; none = unlimited)")
@click.option("--reset", is_flag=True, help="drop this scope's policy (back to defaults)")
@json_option
@pass_ctx
@handle_errors()
def policy_set(c: Ctx, agent: str | None, min_tier: str | None, min_t_score: int | None,
               min_rating: str | None, caps: tuple[str, ...], reset: bool,
               as_json: bool) -> None:
    """Change the global trust policy, or AGENT's stricter override."""
    result = c.client.call("axis.policy_set", agent=agent,
                           min_tier=min_tier.upper() if min_tier else None,
                           min_t_score=min_t_score,
                           min_rating=min_rating.upper() if min_rating else None,
                           caps=_caps(caps), reset=reset)
    _out(as_json, result, show.axis_policy(result))


@policy.command("show")
@click.option("--agent", help="show AGENT's effective policy")
@json_option
@pass_ctx
@handle_errors()
def policy_show(c: Ctx, agent: str | None, as_json: bool) -> None:
    """The effective trust policy (global, or for AGENT)."""
    result = c.client.call("axis.policy_show", agent=agent)
    _out(as_json, result, show.axis_policy(result))
