"""naosctl broker / skill / cost: route and run tasks, install skills, manage budgets."""

from __future__ import annotations

import json
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import click

from naosctl import broker_render as br
from naosctl import render
from naosctl.main import Ctx, cli, handle_errors, json_option, pass_ctx

MAX_MANIFEST = 64 * 1024
MAX_MODULE = 16 * 1024 * 1024


def _task(task: str) -> str:
    return sys.stdin.read() if task == "-" else task


def _echo(result: Any, as_json: bool, text: str) -> None:
    click.echo(render.to_json(result) if as_json else text)


# -- broker ----------------------------------------------------------------------------


@cli.group()
def broker() -> None:
    """Route tasks to skills, WASM skills or the LLM, and run them."""


@broker.command("skills")
@json_option
@pass_ctx
@handle_errors()
def broker_skills(c: Ctx, as_json: bool) -> None:
    """Installed and built-in skills with patterns, route kind and price."""
    result = c.client.call("broker.skills")
    _echo(result, as_json, br.skills(result) if not as_json else "")


@broker.command("route")
@click.argument("task")
@click.option("--explain", is_flag=True, help="every candidate's score, ties and near misses")
@json_option
@pass_ctx
@handle_errors()
def broker_route(c: Ctx, task: str, explain: bool, as_json: bool) -> None:
    """Which handler would take TASK (- reads stdin); nothing runs."""
    result = c.client.call("broker.route", task=_task(task))
    _echo(result, as_json, "" if as_json else br.route(result, explain))
    if result.get("error"):
        if not as_json:
            click.echo(f"naosctl: {result['error']['message']}", err=True)
        sys.exit(1)


@broker.command("execute")
@click.argument("task")
@click.option("--agent", help="the agent the task runs for (its budget and trust apply)")
@click.option("--route", help="pin the handler: skill:NAME, wasm:NAME or llm")
@json_option
@pass_ctx
@handle_errors()
def broker_execute(c: Ctx, task: str, agent: str | None, route: str | None,
                   as_json: bool) -> None:
    """Route TASK (- reads stdin) and run it: trust, reserve, execute, settle, audit."""
    params: dict[str, Any] = {"task": _task(task), "timeout": c.timeout}  # our deadline
    if agent:
        params["agent"] = agent
    if route:
        params["route"] = route
    result = c.client.call("broker.execute", **params)
    _echo(result, as_json, "" if as_json else br.execute(result))
    if not as_json:
        click.echo(br.execute_summary(result), err=True)


@broker.command("stats")
@click.option("--since", default="1d", show_default=True, help="15m, 2h, 1d, 1w or ISO time")
@click.option("--agent", help="only this agent's tasks")
@json_option
@pass_ctx
@handle_errors()
def broker_stats(c: Ctx, since: str, agent: str | None, as_json: bool) -> None:
    """Tasks and cost by route kind, and the saving against sending all to the LLM."""
    params: dict[str, Any] = {"since": since}
    if agent:
        params["agent"] = agent
    result = c.client.call("broker.stats", **params)
    _echo(result, as_json, "" if as_json else br.stats(result))


# -- skill -----------------------------------------------------------------------------


@cli.group()
def skill() -> None:
    """Install, list and remove WASM skill packages."""


def _module_name(manifest: bytes) -> str:
    try:
        data = json.loads(manifest)
    except ValueError as exc:
        raise click.ClickException(f"manifest.json: not valid JSON: {exc}") from None
    name = data.get("module", "module.wasm") if isinstance(data, dict) else "module.wasm"
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise click.ClickException(f"manifest.json: module must be a plain file name, got {name!r}")
    return name


def _read_capped(data: bytes | None, what: str, cap: int) -> bytes:
    if data is None:
        raise click.ClickException(f"the package has no {what}")
    if len(data) > cap:
        raise click.ClickException(f"{what} is larger than {cap} bytes")
    return data


def read_package(path: Path) -> tuple[bytes, bytes]:
    """(manifest.json, module) from a directory, .tar(.gz|.bz2|.xz)/.tgz or .zip.

    Only the two named members are read, into memory: nothing is extracted."""
    if path.is_dir():
        def member(name: str) -> bytes | None:
            file = path / name
            return file.read_bytes() if file.is_file() else None
        manifest = _read_capped(member("manifest.json"), "manifest.json", MAX_MANIFEST)
        return manifest, _read_capped(member(_module_name(manifest)), "module", MAX_MODULE)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return _from_members(lambda n: _zip_member(zf, n))
    try:
        with tarfile.open(path) as tf:
            return _from_members(lambda n: _tar_member(tf, n))
    except tarfile.TarError as exc:
        raise click.ClickException(
            f"{path}: not a skill package (a directory, tar or zip archive): {exc}") from None


def _from_members(get: Any) -> tuple[bytes, bytes]:
    manifest = _read_capped(get("manifest.json"), "manifest.json", MAX_MANIFEST)
    return manifest, _read_capped(get(_module_name(manifest)), "module", MAX_MODULE)


def _names(name: str) -> tuple[str, ...]:
    return (name, f"./{name}")


def _zip_member(zf: zipfile.ZipFile, name: str) -> bytes | None:
    for candidate in _names(name):
        try:
            info = zf.getinfo(candidate)
        except KeyError:
            continue
        if info.file_size > MAX_MODULE:
            raise click.ClickException(f"{name} is larger than {MAX_MODULE} bytes")
        return zf.read(info)
    return None


def _tar_member(tf: tarfile.TarFile, name: str) -> bytes | None:
    for candidate in _names(name):
        try:
            info = tf.getmember(candidate)
        except KeyError:
            continue
        if not info.isfile():
            raise click.ClickException(f"{name} in the archive is not a regular file")
        if info.size > MAX_MODULE:
            raise click.ClickException(f"{name} is larger than {MAX_MODULE} bytes")
        fh = tf.extractfile(info)
        return fh.read() if fh is not None else None
    return None


@skill.command("install")
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@click.option("--sha256", help="the module's expected sha256 (hex); refused if it differs")
@click.option("--replace", is_flag=True, help="replace an installed skill of the same name")
@json_option
@pass_ctx
@handle_errors()
def skill_install(c: Ctx, package: Path, sha256: str | None, replace: bool,
                  as_json: bool) -> None:
    """Install PACKAGE (a directory or archive with manifest.json and the module)."""
    manifest, module = read_package(package)
    params: dict[str, Any] = {"manifest": manifest, "module": module, "replace": replace}
    if sha256:
        params["sha256"] = sha256.strip().lower()
    result = c.client.call("skill.install", **params)
    _echo(result, as_json, "" if as_json else
          f"installed {result['name']} {result['version']} (sha256 {result['sha256']})")


@skill.command("list")
@json_option
@pass_ctx
@handle_errors()
def skill_list(c: Ctx, as_json: bool) -> None:
    """Installed (not built-in) skills."""
    result = c.client.call("broker.skills")
    result["skills"] = [s for s in result["skills"] if s["source"] == "installed"]
    _echo(result, as_json, "" if as_json else br.skills(result))


@skill.command("remove")
@click.argument("name")
@json_option
@pass_ctx
@handle_errors()
def skill_remove(c: Ctx, name: str, as_json: bool) -> None:
    """Remove an installed skill."""
    result = c.client.call("skill.remove", name=name)
    _echo(result, as_json, "" if as_json else f"removed {name}")


# -- cost ------------------------------------------------------------------------------


@cli.group()
def cost() -> None:
    """Budgets per agent and global, and the cost ledger."""


def _scope(agent: str | None, is_global: bool) -> str:
    if is_global == (agent is not None):
        raise click.UsageError("name an AGENT or pass --global (not both)")
    return "*" if is_global else str(agent)


def _levels(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: use whole percents like 50,80,95",
                                 param_hint="--alert-at") from None


@cost.command("set")
@click.argument("agent", required=False)
@click.option("--global", "is_global", is_flag=True, help="the global budget")
@click.option("--budget", required=True, help="'$10/day', '10 USD/week', '$0.50/month'")
@click.option("--alert-at", default="50,80,100", show_default=True, help="percents")
@click.option("--action", type=click.Choice(["pause", "throttle", "alert"]), default="pause",
              show_default=True, help="what happens at the limit")
@click.option("--throttle-rate", type=click.FloatRange(min=1e-6, max=1e6), default=1.0,
              show_default=True, help="tasks per second once throttled")
@click.option("--throttle-burst", type=click.IntRange(1, 1_000_000), default=1, show_default=True)
@json_option
@pass_ctx
@handle_errors()
def cost_set(c: Ctx, agent: str | None, is_global: bool, budget: str, alert_at: str,
             action: str, throttle_rate: float, throttle_burst: int, as_json: bool) -> None:
    """Set AGENT's budget (or the global one with --global)."""
    result = c.client.call("cost.set", scope=_scope(agent, is_global), budget=budget,
                           alert_at=_levels(alert_at), action=action,
                           throttle_rate=throttle_rate, throttle_burst=throttle_burst)
    _echo(result, as_json, "" if as_json else br.budgets({"budgets": [result]}))


@cost.command("status")
@click.argument("agent", required=False)
@click.option("--global", "is_global", is_flag=True)
@json_option
@pass_ctx
@handle_errors()
def cost_status(c: Ctx, agent: str | None, is_global: bool, as_json: bool) -> None:
    """Every budget, or AGENT's (or the global one)."""
    params = {"scope": _scope(agent, is_global)} if agent or is_global else {}
    result = c.client.call("cost.status", **params)
    _echo(result, as_json, "" if as_json else br.budgets(result))


@cost.command("reset")
@click.argument("agent", required=False)
@click.option("--global", "is_global", is_flag=True)
@json_option
@pass_ctx
@handle_errors()
def cost_reset(c: Ctx, agent: str | None, is_global: bool, as_json: bool) -> None:
    """Start a fresh period now for AGENT's budget (or the global one); lifts a pause."""
    result = c.client.call("cost.reset", scope=_scope(agent, is_global))
    _echo(result, as_json, "" if as_json else br.budgets({"budgets": [result]}))


@cost.command("remove")
@click.argument("agent", required=False)
@click.option("--global", "is_global", is_flag=True)
@json_option
@pass_ctx
@handle_errors()
def cost_remove(c: Ctx, agent: str | None, is_global: bool, as_json: bool) -> None:
    """Delete AGENT's budget (or the global one)."""
    result = c.client.call("cost.remove", scope=_scope(agent, is_global))
    _echo(result, as_json, f"budget {result['removed']} removed")


@cost.command("history")
@click.option("--days", type=click.IntRange(1, 3660), default=7, show_default=True)
@click.option("--agent", help="only this agent's costs")
@click.option("--entries", is_flag=True, help="also list the latest ledger entries")
@click.option("--limit", type=click.IntRange(0, 10_000), default=100, show_default=True,
              help="how many of the latest entries")
@json_option
@pass_ctx
@handle_errors()
def cost_history(c: Ctx, days: int, agent: str | None, entries: bool, limit: int,
                 as_json: bool) -> None:
    """The cost ledger by day, agent and route kind."""
    params: dict[str, Any] = {"days": days, "limit": limit}
    if agent:
        params["agent"] = agent
    result = c.client.call("cost.history", **params)
    text = "" if as_json else br.history(result)
    if entries and not as_json:
        text += "\n" + "\n".join(
            f"{e['ts']}  {e['agent'] or '-'}  {e['route_kind']}:{e['handler']}  {e['status']}  "
            f"{br.usd(e['cost_micro'])}" for e in result["entries"])
    _echo(result, as_json, text)

