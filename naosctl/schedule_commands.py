"""naosctl schedule: run a saga, workflow or agent on a cron schedule.

Exit codes: 0 done; 2 bad input (a cron expression that does not parse says
which field and why); 4 no such schedule or target; 1 a conflict (the name
is taken); 7 naosd not running."""

from __future__ import annotations

from typing import Any

import click

from naosctl.agent_commands import read_input
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx
from naosctl.render import to_json


def schedule_line(s: dict[str, Any]) -> str:
    when = f"cron '{s['cron']}' (UTC)" if s["cron"] else f"every {s['every_s']}s"
    last = f"  last {s['last_slot']} -> {s['last_run'] or '-'}" if s["last_slot"] else ""
    error = f"  error: {s['last_error']}" if s["last_error"] else ""
    return (f"{s['name']}  {s['target_kind']} {s['target']}  {when}  "
            f"missed={s['missed']}  next {s['next_due']}  fired={s['fired']} "
            f"skipped={s['skipped']}{last}{error}")


@cli.group()
def schedule() -> None:
    """Run sagas, workflows or agents on a cron schedule (UTC), durably."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", "cron_", metavar="EXPR",
              help='five fields, UTC: minute hour day-of-month month day-of-week, '
                   'e.g. "*/5 * * * *" or "0 9 * * mon-fri"')
@click.option("--every", type=click.IntRange(1), hidden=True,
              help="testing aid: every N seconds instead of --cron")
@click.option("--saga", help="start a run of this saga")
@click.option("--workflow", help="start a run of this workflow")
@click.option("--agent", help="send the input to this agent")
@click.option("--input", "input_", metavar="JSON|FILE|-", help="the run's input")
@click.option("--missed", type=click.Choice(["skip", "catch-up"]), default="skip",
              show_default=True,
              help="slots missed while naosd was down: fire once for the newest (skip) "
                   "or each of them (catch-up, at most 100)")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="an agent target: seconds its call may take")
@json_option
@pass_ctx
@handle_errors()
def schedule_add(c: Ctx, name: str, cron_: str | None, every: int | None, saga: str | None,
                 workflow: str | None, agent: str | None, input_: str | None,
                 missed: str, timeout: float, as_json: bool) -> None:
    """Add schedule NAME: --cron EXPR and one of --saga, --workflow, --agent."""
    targets = [t for t in (saga, workflow, agent) if t is not None]
    if len(targets) != 1:
        raise click.UsageError("give exactly one of --saga, --workflow, --agent")
    if (cron_ is None) == (every is None):
        raise click.UsageError("give --cron EXPR")
    result = c.client.call("schedule.add", name=name, cron=cron_, every=every, saga=saga,
                           workflow=workflow, agent=agent, input=read_input(input_),
                           missed=missed, timeout=timeout)
    click.echo(to_json(result) if as_json else schedule_line(result))


@schedule.command("list")
@json_option
@pass_ctx
@handle_errors()
def schedule_list(c: Ctx, as_json: bool) -> None:
    """Every schedule: target, when, next slot due, last fired and what it started."""
    rows = c.client.call("schedule.list")
    click.echo(to_json(rows) if as_json else
               "\n".join(schedule_line(r) for r in rows) or "no schedules")


@schedule.command("remove")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors()
def schedule_remove(c: Ctx, name: str, as_json: bool) -> None:
    """Remove schedule NAME (runs it started go on)."""
    result = c.client.call("schedule.remove", name=name)
    click.echo(to_json(result) if as_json else f"schedule {name} removed")
