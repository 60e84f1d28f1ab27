"""naosctl init, config validate and apply: project files (naos.toml)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import click

from naosctl import render
from naosctl.main import Ctx, cli, config, handle_errors, json_option, pass_ctx
from naosd.errors import ConfigError

EXAMPLE_TOML = """\
# naos project: agents and the supervisors that keep them alive.
# Load it into a running naosd with: naosctl apply

[agents.greeter]
source = "agents/greeter.py"
config = { greeting = "hello" }

[agents.counter]
template = "wordcount"

[supervisors.main]
strategy = "one-for-one"   # or one-for-all, rest-for-one
max_restarts = 3           # more restarts than this ...
window = 60                # ... within this many seconds: give up and escalate
children = ["greeter", { name = "counter", restart = "transient" }]
"""

EXAMPLE_AGENT = '''\
"""An example agent: greets whoever is named in the message.

The handler API: handle(message, ctx) -> reply (JSON values).  ctx.name,
ctx.config, ctx.log(...).  Raising an exception crashes the agent: the caller
gets an error and the supervisor restarts it.
"""


def handle(message, ctx):
    who = message.get("name", "world") if isinstance(message, dict) else str(message)
    ctx.log("greeting", who)
    return {"text": f"{ctx.config.get('greeting', 'hello')}, {who}!"}
'''


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
def init(directory: str) -> None:
    """Scaffold a project: naos.toml with an example agent and supervisor."""
    root = Path(directory)
    target = root / "naos.toml"
    if target.exists():
        click.echo(f"naosctl: {target} already exists; not overwriting it", err=True)
        sys.exit(1)
    (root / "agents").mkdir(parents=True, exist_ok=True)
    target.write_text(EXAMPLE_TOML, encoding="utf-8")
    handler = root / "agents" / "greeter.py"
    if not handler.exists():
        handler.write_text(EXAMPLE_AGENT, encoding="utf-8")
    click.echo(f"created {target} and {handler}\nnext: naosctl config validate {target} && "
               f"naosctl apply {target}")


def load_project_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (naosctl init creates one)") from None


@config.command("validate")
@click.argument("path", type=click.Path(dir_okay=False), default="naos.toml")
@json_option
def config_validate(path: str, as_json: bool) -> None:
    """Check a project file; errors name the key and the reason."""
    from actors.domain.project import parse

    file = Path(path)
    try:
        text = load_project_text(file)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        project = parse(doc, file.resolve().parent, origin=str(file))
    except ConfigError as exc:
        click.echo(render.to_json({"ok": False, "error": exc.message}) if as_json
                   else f"naosctl: {exc.message}", err=not as_json)
        sys.exit(1)
    orch = {k: [d["name"] for d in v] for k, v in project.orchestration.items()}
    summary = {"ok": True, "agents": [a.name for a in project.agents],
               "supervisors": [s.name for s in project.supervisors], **orch}
    extra = "".join(f", {len(v)} {k}" for k, v in orch.items() if v)
    click.echo(render.to_json(summary) if as_json else
               f"{file}: OK ({len(project.agents)} agents, "
               f"{len(project.supervisors)} supervisors{extra})")


SIGNS = {"create": "+", "update": "~", "delete": "-", "unchanged": "="}


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False), default="naos.toml")
@click.option("--dry-run", is_flag=True, help="print the plan; change nothing")
@click.option("--prune", is_flag=True,
              help="delete what this file named at its last apply and names no more")
@click.option("--timeout", "wait", type=float, default=60.0, show_default=True)
@json_option
@pass_ctx
@handle_errors()
def apply(c: Ctx, path: str, dry_run: bool, prune: bool, wait: float, as_json: bool) -> None:
    """Make naosd match a project file: create, update (only what changed
    restarts) and, with --prune, delete."""
    file = Path(path)
    result = c.client.call("project.apply", text=load_project_text(file),
                           base=str(file.resolve().parent), origin=str(file), timeout=wait,
                           dry_run=dry_run, prune=prune)
    if as_json:
        click.echo(render.to_json(result))
        return
    for step in result["plan"]:
        fields = f" ({', '.join(step['fields'])})" if step["fields"] else ""
        click.echo(f"{SIGNS[step['action']]} {step['action']:<9} {step['kind']} "
                   f"{step['name']}{fields}")
    counts = {a: sum(1 for s in result["plan"] if s["action"] == a) for a in SIGNS}
    verb = "would" if dry_run else "did"
    click.echo(f"{path}: {verb} create {counts['create']}, update {counts['update']}, "
               f"delete {counts['delete']}; {counts['unchanged']} unchanged"
               + (" (dry run: nothing changed)" if dry_run else ""))
