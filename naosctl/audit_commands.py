"""naosctl audit: read, search, verify, export and anchor the audit log."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from naosctl import render
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx

F = TypeVar("F", bound=Callable[..., Any])


@cli.group()
def audit() -> None:
    """Read, search, verify, export and anchor the tamper-evident audit log."""


def audit_filters(fn: F) -> F:
    fn = click.option("--agent", help="only rows about this agent")(fn)
    fn = click.option("--type", "type_", metavar="TYPE", help="only this event type")(fn)
    fn = click.option("--since", help="15m, 2h, 1d or an ISO-8601 time")(fn)
    return fn


def _filters(agent: str | None, type_: str | None, since: str | None) -> dict[str, Any]:
    return {k: v for k, v in {"agent": agent, "type": type_, "since": since}.items() if v}


@audit.command("tail")
@click.option("-n", "count", type=click.IntRange(0, 100_000), default=20, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="keep printing new rows")
@audit_filters
@json_option
@pass_ctx
@handle_errors()
def audit_tail(c: Ctx, count: int, follow: bool, agent: str | None, type_: str | None,
               since: str | None, as_json: bool) -> None:
    """The last rows of the audit log (-f to follow)."""
    rows = c.client.stream("audit.tail", n=count, follow=follow,
                           **_filters(agent, type_, since))
    _print_rows(rows, as_json=as_json, lines=follow)


def _print_rows(rows: Iterator[dict[str, Any]], *, as_json: bool, lines: bool) -> None:
    if as_json and not lines:
        click.echo(render.to_json(list(rows)))
        return
    for row in rows:
        text = render.jsonl([row]).rstrip("\n") if as_json else render.audit_row(row)
        click.echo(text)


@audit.command("search")
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@audit_filters
@json_option
@pass_ctx
@handle_errors()
def audit_search(c: Ctx, query: str, limit: int, agent: str | None, type_: str | None,
                 since: str | None, as_json: bool) -> None:
    """Rows whose type, actor, agent or detail contain QUERY."""
    rows = c.client.call("audit.search", query=query, limit=limit,
                         **_filters(agent, type_, since))
    _print_rows(iter(rows), as_json=as_json, lines=False)
    if not rows and not as_json:
        click.echo("no matching audit rows", err=True)


@audit.command("verify")
@click.option("--anchor", "anchor_file", type=click.Path(exists=True, dir_okay=False),
              help="also check against a head exported earlier (audit head --export)")
@json_option
@pass_ctx
@handle_errors()
def audit_verify(c: Ctx, anchor_file: str | None, as_json: bool) -> None:
    """Check the hash chain; exit 1 and name the first bad row (or the alert,
    the checkpoint or the anchor) if it does not verify."""
    params = {"anchor": read_anchor(Path(anchor_file))} if anchor_file else {}
    result = c.client.call("audit.verify", **params)
    click.echo(render.to_json(result) if as_json else render.verify(result))
    if not result["ok"]:
        sys.exit(1)


def read_anchor(path: Path) -> dict[str, Any]:
    """An exported head from ``path``: the JSON of ``audit head --export --json``
    or the ``name: value`` lines of ``audit head --export``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--anchor") from None
    data: Any
    try:
        data = json.loads(text)
    except ValueError:
        data = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        seq = data.get("seq")
        if isinstance(seq, str) and seq.isdigit():
            data["seq"] = int(seq)
    if not isinstance(data, dict) or "mac" not in data:
        raise click.BadParameter(f"{path} holds no exported audit head", param_hint="--anchor")
    return data


@audit.command("head")
@click.option("--export", is_flag=True,
              help="sign it with the audit key, to keep outside this machine")
@json_option
@pass_ctx
@handle_errors()
def audit_head(c: Ctx, export: bool, as_json: bool) -> None:
    """The last audit row's seq, hash and time; --export signs it (HMAC-SHA256)
    so that `audit verify --anchor FILE` can later check the log still holds it."""
    head = c.client.call("audit.head", export=export)
    if as_json:
        click.echo(json.dumps(head, sort_keys=True))
        return
    click.echo("".join(f"{k}: {head[k]}\n" for k in
                       ("format", "seq", "hash", "ts", "key_id", "mac") if k in head), nl=False)


@audit.command("reanchor")
@click.option("--yes", is_flag=True, help="really accept the log as it is now")
@json_option
@pass_ctx
@handle_errors()
def audit_reanchor(c: Ctx, yes: bool, as_json: bool) -> None:
    """After investigating a verify failure: accept the log as it is and restart
    the head checkpoint from it. Audited with the old checkpoint and the head."""
    if not yes:
        result = c.client.call("audit.verify")
        click.echo(render.verify(result), err=True)
        click.echo("nothing changed: re-run with --yes to accept the log as it is now and "
                   "re-anchor the checkpoint at its head", err=True)
        sys.exit(1)
    done = c.client.call("audit.reanchor", confirm=True)
    if as_json:
        click.echo(render.to_json(done))
        return
    old = done["row"]["detail"]["old_checkpoint"]
    click.echo(f"audit checkpoint re-anchored at #{done['checkpoint']['seq']} (it was "
               f"{old['state']}{': ' + old['problem'] if old.get('problem') else ''})")


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="write to this file instead of stdout")
@audit_filters
@pass_ctx
@handle_errors()
def audit_export(c: Ctx, fmt: str, output: str | None, agent: str | None,
                 type_: str | None, since: str | None) -> None:
    """Export audit rows, oldest first, as JSON lines or CSV."""
    batches = c.client.stream("audit.export", **_filters(agent, type_, since))
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        for i, batch in enumerate(batches):
            text = render.jsonl(batch) if fmt == "jsonl" else render.csv_rows(
                batch, header=i == 0)
            out.write(text)
            count += len(batch)
        if fmt == "csv" and count == 0:
            out.write(render.csv_rows([], header=True))
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"exported {count} rows to {output}", err=True)
