"""naosctl commands for agents and supervisors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from naosctl import render
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx

WAIT = click.option("--timeout", "wait", type=float, default=30.0, show_default=True,
                    help="seconds to wait for the change to happen")


def read_input(value: str | None) -> Any:
    """--input: JSON text, a file holding JSON, or - for standard input."""
    if value is None:
        return None
    if value == "-":
        text = sys.stdin.read()
    elif _is_file(value):
        text = Path(value).read_text(encoding="utf-8")
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--input") from None


def _is_file(value: str) -> bool:
    """Whether ``value`` names a file (JSON text too long for a path is not one)."""
    try:
        return Path(value).is_file()
    except OSError:  # ENAMETOOLONG: a long message given inline
        return False


def _show(result: Any, as_json: bool, text: str) -> None:
    click.echo(render.to_json(result) if as_json else text)


@cli.command()
@click.argument("name")
@click.option("--template", help="a built-in template: echo, wordcount")
@click.option("--source", type=click.Path(exists=True, dir_okay=False),
              help="a handler .py file or a .wasm module")
@click.option("--config", "config_json", help="the agent's config, as JSON")
@click.option("--supervisor", help="put it under this supervisor")
@click.option("--restart", type=click.Choice(["permanent", "transient", "temporary"]),
              default="permanent", show_default=True)
@click.option("--start/--no-start", default=True, show_default=True)
@click.option("--require", "requires", multiple=True, metavar="CAP|node=NAME",
              help="run it only on a node with this capability (or this name); repeatable")
@click.option("--grant", "grants", multiple=True, metavar="NAME",
              help="grant net, read:/PATH or write:/PATH (beside naos's own files), or a "
                   "WASM agent a naos host function (llm_chat, agent_ask, "
                   "agent_tell, execute, state_get, state_set, log, kv_get, kv_set; "
                   "docs/wasm-abi.md); repeatable")
@click.option("--limit", "limits", multiple=True, metavar="KEY=N",
              help="memory_mb, cpu_seconds, open_files or processes; repeatable")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE",
              help="a variable of the handler's environment (it gets nothing else)")
@click.option("--confinement", type=click.Choice(["full", "none"]), default=None,
              help="full (the default): the handler runs confined (docs/security.md); "
                   "none: unconfined, audited")
@click.option("--max-concurrency", type=click.IntRange(1, 256), default=None,
              help="messages the handler serves at once (default 1)")
@WAIT
@json_option
@pass_ctx
@handle_errors()
def create(c: Ctx, name: str, template: str | None, source: str | None,
           config_json: str | None, supervisor: str | None, restart: str, start: bool,
           requires: tuple[str, ...], grants: tuple[str, ...], limits: tuple[str, ...],
           env: tuple[str, ...], confinement: str | None, max_concurrency: int | None,
           wait: float, as_json: bool) -> None:
    """Register agent NAME (and start it)."""
    if not template and not source:
        template = "echo"
    config = read_input(config_json) if config_json else None
    execution = {"grants": list(grants) or None, "confinement": confinement,
                 "max_concurrency": max_concurrency,
                 "env": _pairs(env, "--env") or None,
                 "limits": {k: _whole(v, k) for k, v in _pairs(limits, "--limit").items()}
                 or None}
    result = c.client.call(
        "agent.create", name=name, template=template,
        source=str(Path(source).resolve()) if source else None, config=config,
        supervisor=supervisor, restart=restart, start=start, timeout=wait,
        **({"requires": list(requires)} if requires else {}),
        **{k: v for k, v in execution.items() if v is not None})
    where = f" on {result['node']}" if result.get("node") else ""
    _show(result, as_json, f"agent {name} created ({result['state']}{where})")


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    """NAME=VALUE options as a dict; a value without ``=`` is a usage error."""
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not NAME=VALUE", param_hint=option)
        pairs[key] = rest
    return pairs


def _whole(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{key}={value!r}: not a whole number",
                                 param_hint="--limit") from None


@cli.command()
@click.argument("name")
@click.option("--source", type=click.Path(exists=True),
              help="the new handler .py file, .wasm module or directory")
@click.option("--entry", help="the entry file of a directory source")
@click.option("--config", "config_json", metavar="JSON|FILE|-",
              help="the agent's new config, as JSON (replaces the old one)")
@WAIT
@json_option
@pass_ctx
@handle_errors()
def update(c: Ctx, name: str, source: str | None, entry: str | None,
           config_json: str | None, wait: float, as_json: bool) -> None:
    """Roll out new code (a new snapshot) or config to agent NAME; it restarts on it."""
    if source is None and config_json is None:
        raise click.UsageError("give --source, --config or both")
    result = c.client.call(
        "agent.update", name=name, source=str(Path(source).resolve()) if source else None,
        entry=entry, config=read_input(config_json) if config_json else None, timeout=wait)
    if not result["changed"]:
        text = f"agent {name}: unchanged"
    else:
        digests = (f" (code {result['old_digest'][:12] or '-'} -> {result['new_digest'][:12]})"
                   if "execution" in result["changed"] else "")
        how = "restarted" if result["restarted"] else result["state"]
        text = f"agent {name} updated{digests}: {how}"
    _show(result, as_json, text)


@cli.command()
@click.argument("name")
@click.option("--input", "input_", metavar="JSON|FILE|-", help="the message (JSON)")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--idempotency-key", default="")
@json_option
@pass_ctx
@handle_errors()
def run(c: Ctx, name: str, input_: str | None, timeout: float, idempotency_key: str,
        as_json: bool) -> None:
    """Send one message to agent NAME and print its reply."""
    result = c.client.call("agent.run", name=name, input=read_input(input_),
                           timeout=timeout, idempotency_key=idempotency_key)
    _show(result, as_json, render.to_json(result["output"]))


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@handle_errors()
def inspect(c: Ctx, name: str, as_json: bool) -> None:
    """Full definition and runtime state of agent NAME."""
    result = c.client.call("agent.inspect", name=name)
    _show(result, as_json, render.agent_detail(result))


@cli.command()
@click.argument("name", required=False)
@click.option("-n", "count", type=click.IntRange(0, 100_000), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True)
@json_option
@pass_ctx
@handle_errors()
def logs(c: Ctx, name: str | None, count: int, follow: bool, as_json: bool) -> None:
    """Log lines of agent NAME (of every agent without NAME); -f follows."""
    for line in c.client.stream("agent.logs", name=name, n=count, follow=follow):
        click.echo(json.dumps(line) if as_json else render.log_line(line))


def _lifecycle(verb: str, method: str) -> None:
    @cli.command(verb, help=f"{verb.capitalize()} agent NAME.")
    @click.argument("name")
    @WAIT
    @json_option
    @pass_ctx
    @handle_errors()
    def command(c: Ctx, name: str, wait: float, as_json: bool) -> None:
        result = c.client.call(method, name=name, timeout=wait)
        state = result.get("state", "deleted" if verb == "delete" else "?")
        _show(result, as_json, f"agent {name}: {state}")


_lifecycle("start", "agent.start")
_lifecycle("stop", "agent.stop")
_lifecycle("restart", "agent.restart")


def _delete(verb: str) -> None:
    @cli.command(verb, help="Stop and forget agent NAME (refused while a saga, workflow or "
                            "pool uses it, or while it runs supervised, without --force).")
    @click.argument("name")
    @click.option("--force", is_flag=True, help="delete it even while it runs supervised")
    @WAIT
    @json_option
    @pass_ctx
    @handle_errors()
    def command(c: Ctx, name: str, force: bool, wait: float, as_json: bool) -> None:
        result = c.client.call("agent.delete", name=name, timeout=wait, force=force)
        _show(result, as_json, f"agent {name}: deleted")


def _list(verb: str) -> None:
    @cli.command(verb, help="Every agent with its state, pid, uptime, restarts and supervisor.")
    @json_option
    @pass_ctx
    @handle_errors()
    def command(c: Ctx, as_json: bool) -> None:
        rows = c.client.call("agent.list")
        _show(rows, as_json, "\n".join(render.agent_row(a) for a in rows) or "no agents")


_delete("delete")
_delete("remove")
_list("ls")
_list("list")


@cli.command()
@click.argument("name")
@json_option
@pass_ctx
@handle_errors()
def kill(c: Ctx, name: str, as_json: bool) -> None:
    """SIGKILL agent NAME's process (its supervisor restarts it)."""
    result = c.client.call("agent.kill", name=name)
    _show(result, as_json, f"killed {name} (pid {result['pid']})")


# ---------------------------------------------------------------------------


@cli.group()
def supervisor() -> None:
    """Define, start, stop and inspect supervision trees."""


@supervisor.command("create")
@click.argument("name")
@click.option("--strategy", type=click.Choice(["one-for-one", "one-for-all", "rest-for-one"]),
              default="one-for-one", show_default=True)
@click.option("--max-restarts", type=click.IntRange(0), default=3, show_default=True)
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="seconds")
@click.option("--backoff", type=click.FloatRange(min=0), default=0.0,
              help="first restart delay (doubles per crash)")
@click.option("--backoff-max", type=click.FloatRange(min=0), default=0.0)
@click.option("--parent", help="nest it under this supervisor")
@json_option
@pass_ctx
@handle_errors()
def supervisor_create(c: Ctx, name: str, strategy: str, max_restarts: int, window: float,
                      backoff: float, backoff_max: float, parent: str | None,
                      as_json: bool) -> None:
    """Define supervisor NAME."""
    result = c.client.call("supervisor.create", name=name, strategy=strategy,
                           max_restarts=max_restarts, window=window,
                           backoff_initial=backoff, backoff_max=max(backoff, backoff_max),
                           parent=parent)
    _show(result, as_json, f"supervisor {name} created ({strategy}, at most "
                           f"{max_restarts} restarts in {window:g}s)")


@supervisor.command("add")
@click.argument("name")
@click.argument("child")
@click.option("--restart", type=click.Choice(["permanent", "transient", "temporary"]),
              default="permanent", show_default=True)
@json_option
@pass_ctx
@handle_errors()
def supervisor_add(c: Ctx, name: str, child: str, restart: str, as_json: bool) -> None:
    """Put agent or supervisor CHILD under supervisor NAME."""
    result = c.client.call("supervisor.add", supervisor=name, child=child, restart=restart)
    _show(result, as_json, f"{child} is now supervised by {name} ({restart})")


def _sup_lifecycle(verb: str) -> None:
    @supervisor.command(verb, help=f"{verb.capitalize()} supervisor NAME and its subtree.")
    @click.argument("name")
    @WAIT
    @json_option
    @pass_ctx
    @handle_errors()
    def command(c: Ctx, name: str, wait: float, as_json: bool) -> None:
        result = c.client.call(f"supervisor.{verb}", name=name, timeout=wait)
        text = "\n".join(render.tree(result)) if verb != "stop" else f"{name}: stopped"
        _show(result, as_json, text)


_sup_lifecycle("start")
_sup_lifecycle("stop")
_sup_lifecycle("restart")


@supervisor.command("list")
@json_option
@pass_ctx
@handle_errors()
def supervisor_list(c: Ctx, as_json: bool) -> None:
    """Every supervisor defined (naosd's own "agents" is not listed)."""
    rows = c.client.call("supervisor.list")
    _show(rows, as_json, "\n".join(
        f"{r['name']:<20} {r['strategy']:<13} {r['max_restarts']} in {r['window_s']:g}s  "
        f"parent {r['parent'] or '-'}  {r['desired']}" for r in rows) or "no supervisors")


@supervisor.command("delete")
@click.argument("name")
@WAIT
@json_option
@pass_ctx
@handle_errors()
def supervisor_delete(c: Ctx, name: str, wait: float, as_json: bool) -> None:
    """Stop and forget supervisor NAME (refused while it has children)."""
    result = c.client.call("supervisor.delete", name=name, timeout=wait)
    _show(result, as_json, f"supervisor {name}: deleted")


@supervisor.command("status")
@click.argument("name", required=False)
@json_option
@pass_ctx
@handle_errors()
def supervisor_status(c: Ctx, name: str | None, as_json: bool) -> None:
    """Show the supervision tree (of NAME)."""
    result = c.client.call("supervisor.status", name=name)
    _show(result, as_json, "\n".join(render.tree(result)))
