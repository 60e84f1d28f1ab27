"""naosctl: the command line for naosd.

Exit codes (LSB): 0 ok, 1 failure, 2 usage, 3 not running (status),
4 unknown/unreachable or refused, 6 not configured, 7 daemon not running
(actions).  Every read command has ``--json``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from naosctl import render, terminal
from naosctl.client import Client
from naosd import __version__
from naosd.errors import ConfigError, DaemonNotRunning, NaosError

F = TypeVar("F", bound=Callable[..., Any])
NOT_RUNNING = 3  # LSB status: the program is not running


class Ctx:
    """What every command gets: a lazily connected client."""

    def __init__(self, socket_path: Path, timeout: float,
                 factory: Callable[..., Client], traceparent: str | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._factory = factory
        self._trace = {"traceparent": traceparent} if traceparent else {}
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._factory(self.socket_path, timeout=self.timeout,
                                         **self._trace)
            self._client.connect()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def resolve_socket(option: str | None, system: bool) -> Path:
    """--socket > $NAOS_SOCKET > the config file's daemon.socket > the default.

    Only the socket setting can make this fail (ConfigError): naosctl needs
    nothing else from naosd's configuration, so a problem elsewhere in the
    file is one warning line on stderr, and other ``NAOS_*`` variables are
    not read at all."""
    if option:
        return Path(option)
    from naosd.config import locate_socket

    choice = locate_socket(mode="system" if system else "user", environ=os.environ,
                           uid=os.getuid(), home=Path.home())
    if choice.warning:
        click.echo(f"naosctl: warning: {choice.warning}", err=True)
    return choice.path


def handle_errors(*, not_running_code: int = DaemonNotRunning.exit_code) -> Callable[[F], F]:
    """Turn NaosError into a message on stderr and its exit code."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except DaemonNotRunning as exc:
                click.echo(f"naosctl: {exc.message}", err=True)
                sys.exit(not_running_code)
            except NaosError as exc:  # its message may quote an agent's or a guest's text
                click.echo(f"naosctl: {render.printable(exc.message, lines=True)}", err=True)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                sys.exit(130)

        return run  # type: ignore[return-value]

    return wrap


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="machine-readable output")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="naosctl")
@click.option("--socket", "socket_path", metavar="PATH",
              help="naosd control socket (default: $NAOS_SOCKET, config, XDG runtime dir)")
@click.option("--system", is_flag=True, help="talk to the system-wide naosd")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for an answer")
@click.option("--traceparent", envvar="TRACEPARENT", metavar="W3C",
              help="continue this W3C trace (default: $TRACEPARENT); naosd's spans join it")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, system: bool, timeout: float,
        traceparent: str | None) -> None:
    """Control the naos daemon (naosd)."""
    factory = ctx.obj if callable(ctx.obj) else Client
    try:
        path = resolve_socket(socket_path, system)
    except ConfigError as exc:
        click.echo(f"naosctl: {exc.message}", err=True)
        sys.exit(ConfigError.exit_code)
    ctx.obj = Ctx(path, timeout, factory, traceparent)
    ctx.call_on_close(ctx.obj.close)


pass_ctx = click.make_pass_decorator(Ctx)


@cli.command()
@json_option
@pass_ctx
@handle_errors(not_running_code=4)
def ping(c: Ctx, as_json: bool) -> None:
    """Check that naosd answers."""
    started = time.perf_counter()
    result = c.client.call("ping")
    rtt_ms = (time.perf_counter() - started) * 1e3
    if as_json:
        click.echo(render.to_json({**result, "rtt_ms": rtt_ms}))
    else:
        click.echo(f"pong from naosd pid {result['pid']} in {rtt_ms:.2f} ms")


@cli.command()
@click.argument("agent", required=False)
@json_option
@pass_ctx
@handle_errors(not_running_code=3)
def status(c: Ctx, agent: str | None, as_json: bool) -> None:
    """Daemon version, uptime, pid and the actor tree; or one AGENT's state."""
    if agent:
        one = c.client.call("agent.inspect", name=agent, logs=0)
        click.echo(render.to_json(one) if as_json else render.agent_status(one))
        if one.get("state") != "running":
            sys.exit(NOT_RUNNING)  # systemctl/supervisorctl: 3 is "not running"
        return
    result = c.client.call("status")
    if not as_json:
        result["agents"] = c.client.call("agent.list")
    click.echo(render.to_json(result) if as_json else render.status(result))


@cli.command()
@click.option("--no-wait", is_flag=True, help="return once the stop is requested")
@click.option("--wait-timeout", type=float, default=60.0, show_default=True)
@pass_ctx
@handle_errors()
def shutdown(c: Ctx, no_wait: bool, wait_timeout: float) -> None:
    """Stop naosd gracefully (same as SIGTERM)."""
    result = c.client.call("shutdown")
    c.close()
    if no_wait:
        click.echo(f"naosd (pid {result['pid']}) is stopping")
        return
    deadline = time.monotonic() + wait_timeout
    while c.socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if c.socket_path.exists():
        click.echo(f"naosctl: naosd (pid {result['pid']}) still stopping after "
                   f"{wait_timeout:g}s", err=True)
        sys.exit(1)
    click.echo(f"naosd (pid {result['pid']}) stopped")


@cli.command()
@json_option
@pass_ctx
@handle_errors()
def reload(c: Ctx, as_json: bool) -> None:
    """Re-read naosd's configuration file (same as SIGHUP)."""
    result = c.client.call("config.reload")
    if as_json:
        click.echo(render.to_json(result))
        return
    click.echo("configuration reloaded; changed: " + (", ".join(result["changed"]) or "nothing"))
    for key in result["needs_restart"]:
        click.echo(f"  {key} takes effect after a restart")


@cli.group()
def config() -> None:
    """Inspect the daemon's configuration."""


@config.command("show")
@json_option
@pass_ctx
@handle_errors()
def config_show(c: Ctx, as_json: bool) -> None:
    """The effective configuration and where each value came from."""
    result = c.client.call("config.show")
    if as_json:
        click.echo(render.to_json(result))
        return
    for section, values in result["config"].items():
        click.echo(f"[{section}]")
        for key, value in values.items():
            origin = result["sources"].get(f"{section}.{key}", "default")
            click.echo(f"{key} = {value!r}    # {origin}")


@cli.command()
@click.option("--open", "open_browser", is_flag=True, help="open it in a browser")
@json_option
@pass_ctx
@handle_errors()
def dashboard(c: Ctx, open_browser: bool, as_json: bool) -> None:
    """Print the dashboard's login link."""
    info = c.client.call("dashboard.url")
    if as_json:
        click.echo(render.to_json(info))
        return
    if not info.get("enabled"):
        click.echo("naosctl: the dashboard is disabled (dashboard.enabled)", err=True)
        sys.exit(1)
    click.echo(info["login_url"])
    if open_browser:
        webbrowser.open(info["login_url"])


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script (eval it in your shell's rc file)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    comp = cls(cli, {}, "naosctl", "_NAOSCTL_COMPLETE")
    click.echo(comp.source())


def main() -> None:
    terminal.guard_standard_streams()
    cli(prog_name=os.path.basename(sys.argv[0]) or "naosctl")


import naosctl.agent_commands  # noqa: E402 - registers its commands on cli
import naosctl.audit_commands  # noqa: E402
import naosctl.axis_commands  # noqa: E402
import naosctl.broker_commands  # noqa: E402
import naosctl.cluster_commands  # noqa: E402
import naosctl.llm_commands  # noqa: E402
import naosctl.mcp_commands  # noqa: E402
import naosctl.orch_commands  # noqa: E402
import naosctl.project_commands  # noqa: E402
import naosctl.schedule_commands  # noqa: E402
import naosctl.service_commands  # noqa: E402
import naosctl.wasm_commands  # noqa: E402, F401

if __name__ == "__main__":
    main()
