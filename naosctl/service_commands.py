"""naosctl service: install naosd as a systemd (Linux) or launchd (macOS)
service.  Rendering and paths are in ``naosctl/service.py``; this module adds
the command line and the file writing."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from naosctl import render, service
from naosctl.main import cli, handle_errors, json_option
from naosd.errors import Conflict, NaosError, NotFound, PermissionDenied

F = TypeVar("F", bound=Callable[..., Any])


@cli.group("service")
def service_group() -> None:
    """Install naosd as a systemd (Linux) or launchd (macOS) service."""


def target_options(fn: F) -> F:
    # Applied bottom-up: --help lists them in the reverse order of these lines.
    fn = click.option("--platform", type=click.Choice(service.PLATFORMS), hidden=True,
                      help="act as on this platform instead of this machine's")(fn)
    fn = click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path),
                      help="use this directory instead of the service manager's "
                      "(packaging, tests)")(fn)
    fn = click.option("--dry-run", is_flag=True,
                      help="print what would be done; change nothing")(fn)
    fn = click.option("--system", "mode", flag_value="system",
                      help="the system-wide service (runs as the naos user; needs root)")(fn)
    fn = click.option("--user", "mode", flag_value="user",
                      help="your per-user service (the default; naosctl --system "
                      "implies --system)")(fn)
    return fn


@dataclass(frozen=True)
class Target:
    platform: str
    mode: str
    path: Path
    default_location: bool


def resolve_target(ctx: click.Context, mode: str | None, unit_dir: Path | None,
                   platform: str | None) -> Target:
    if mode is None:
        mode = "system" if ctx.find_root().params.get("system") else "user"
    platform = platform or service.current_platform()
    path = service.target_path(platform, mode, os.environ, Path.home(), unit_dir)
    return Target(platform, mode, path, unit_dir is None)


def service_user_exists() -> bool:
    try:
        pwd.getpwnam(service.SERVICE_USER)
        grp.getgrnam(service.SERVICE_USER)
    except KeyError:
        return False
    return True


def read_existing(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise Conflict(f"{path} is a directory") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {path}") from None


def write_atomically(path: Path, content: str) -> None:
    """Replace ``path`` in one rename; mode 0644 (the manager reads it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except PermissionError as exc:
        raise PermissionDenied(f"cannot write {path}: {exc.strerror}") from None
    except OSError as exc:
        raise NaosError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def enablement_links(target: Target) -> list[Path]:
    """systemd ``*.wants``/``*.requires`` symlinks in the same directory that
    point at the unit (what ``systemctl enable`` made)."""
    if target.platform != "linux":
        return []
    links: list[Path] = []
    directory = target.path.parent
    for pattern in (f"*.wants/{target.path.name}", f"*.requires/{target.path.name}"):
        for link in sorted(directory.glob(pattern)):
            if not link.is_symlink():
                continue
            pointee = os.path.normpath(os.path.join(link.parent, os.readlink(link)))
            if pointee == str(target.path):
                links.append(link)
    return links


def root_hint(action: str) -> str:
    try:
        naosctl = str(service.find_executable("naosctl"))
    except NotFound:
        naosctl = "naosctl"
    return f"sudo {naosctl} service {action} --system"


def echo_block(title: str, commands: list[str], *, err: bool) -> None:
    if commands:
        click.echo(title, err=err)
        for command in commands:
            click.echo(f"  {command}", err=err)


def echo_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"naosctl: warning: {warning}", err=True)


@service_group.command("install")
@target_options
@click.option("--force", is_flag=True, help="replace an existing file that differs")
@click.option("--naosd", "naosd_path", type=click.Path(dir_okay=False, path_type=Path),
              help="naosd to run (default: next to this Python, else on PATH)")
@click.option("--naosctl", "naosctl_path", type=click.Path(dir_okay=False, path_type=Path),
              help="naosctl for ExecReload= (default: found like naosd)")
@json_option
@click.pass_context
@handle_errors()
def service_install(ctx: click.Context, mode: str | None, dry_run: bool,
                    unit_dir: Path | None, platform: str | None, force: bool,
                    naosd_path: Path | None, naosctl_path: Path | None,
                    as_json: bool) -> None:
    """Write the systemd unit or launchd plist for naosd on this machine.

    --user (default): ~/.config/systemd/user/naosd.service or
    ~/Library/LaunchAgents/dev.naos.naosd.plist.  --system:
    /etc/systemd/system/naosd.service or /Library/LaunchDaemons/, as root.
    Prints the commands that enable and start it; runs none of them."""
    t = resolve_target(ctx, mode, unit_dir, platform)
    naosd = (service.check_executable(naosd_path) if naosd_path
             else service.find_executable("naosd"))
    naosctl: Path | None = None
    if t.platform == "linux":
        naosctl = (service.check_executable(naosctl_path) if naosctl_path
                   else service.find_executable("naosctl"))
    content = service.render(t.platform, t.mode, naosd=naosd, naosctl=naosctl,
                             home=Path.home())

    warnings = service.reachability_warnings(
        t.platform, t.mode, [p for p in (naosd, naosctl) if p is not None])
    if (t.platform == "linux" and t.default_location
            and not Path("/run/systemd/system").is_dir()):
        warnings.append("systemd is not running on this machine (no /run/systemd/system); "
                        "the unit is of no use here until it is")
    user_exists = service_user_exists() if t.mode == "system" else None
    accounts = service.account_commands(t.platform) if user_exists is False else []
    directories = service.directory_commands(t.platform, t.mode)
    enable = service.enable_commands(t.platform, t.mode, t.path,
                                     default_location=t.default_location, uid=os.getuid())

    existing = read_existing(t.path)
    if existing == content:
        status = "unchanged"
    elif existing is None:
        status = "would-write" if dry_run else "written"
    elif dry_run:
        status = "would-replace" if force else "would-refuse"
    elif not force:
        raise Conflict(f"{t.path} exists and differs from the file naosctl would write; "
                       "pass --force to replace it (--dry-run shows the new file)")
    else:
        status = "replaced"
    if status in ("written", "replaced"):
        if service.root_required(t.mode, unit_dir, os.geteuid()):
            raise PermissionDenied(f"writing {t.path} needs root: run {root_hint('install')} "
                                   "(or add --dry-run to see the file)")
        write_atomically(t.path, content)

    if as_json:
        click.echo(render.to_json({
            "action": "install", "platform": t.platform, "mode": t.mode,
            "path": str(t.path), "naosd": str(naosd),
            "naosctl": str(naosctl) if naosctl else None, "dry_run": dry_run,
            "status": status, "written": status in ("written", "replaced"),
            "content": content, "user_exists": user_exists,
            "prerequisites": accounts + directories, "enable": enable,
            "warnings": warnings,
        }))
        return
    echo_warnings(warnings)
    if dry_run:
        note = {"would-replace": " (replacing the existing file)",
                "would-refuse": " (a different file is there: installing needs --force)",
                "unchanged": " (already there, identical)"}.get(status, "")
        click.echo(f"would write {t.path}{note}; dry run, nothing written", err=True)
        click.echo(content, nl=False)
    elif status == "unchanged":
        click.echo(f"{t.path} is already installed and up to date")
    else:
        verb = "wrote" if status == "written" else status
        click.echo(f"{verb} {t.path} (naosd: {naosd})")
    report_next_steps(t, accounts, directories, enable, err=dry_run)


def report_next_steps(t: Target, accounts: list[str], directories: list[str],
                      enable: list[str], *, err: bool) -> None:
    user = service.SERVICE_USER
    if t.mode == "system" and not accounts:
        click.echo(f"naosd will run as the existing {user!r} user and group", err=err)
    echo_block(f"naosd runs as the {user!r} user and group, which must exist; "
               "create them (as root) with:", accounts, err=err)
    echo_block("create the directories launchd does not (as root):", directories, err=err)
    if t.platform == "darwin" and t.mode == "system":
        click.echo("macOS has no /run: talk to it with "
                   f"NAOS_SOCKET={service.MACOS_SYSTEM_SOCKET} naosctl ...", err=err)
    echo_block("enable and start it with:", enable, err=err)
    if t.platform == "linux" and t.mode == "user":
        click.echo("to keep it running while you are logged out: loginctl enable-linger",
                   err=err)


@service_group.command("uninstall")
@target_options
@click.option("--force", is_flag=True, help="remove the file even if naosctl did not write it")
@json_option
@click.pass_context
@handle_errors()
def service_uninstall(ctx: click.Context, mode: str | None, dry_run: bool,
                      unit_dir: Path | None, platform: str | None, force: bool,
                      as_json: bool) -> None:
    """Remove the file `service install` wrote (and systemd's enable links).

    Prints the commands that stop the running service; runs none of them."""
    t = resolve_target(ctx, mode, unit_dir, platform)
    existing = read_existing(t.path)
    links = enablement_links(t)
    if existing is not None and not service.written_by_us(existing) and not force:
        raise Conflict(f"{t.path} was not written by naosctl service install; "
                       "pass --force to remove it anyway")
    removed = ([t.path] if existing is not None else []) + links
    if removed and not dry_run:
        if service.root_required(t.mode, unit_dir, os.geteuid()):
            raise PermissionDenied(f"removing {t.path} needs root: run "
                                   f"{root_hint('uninstall')}")
        for path in removed:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except PermissionError as exc:
                raise PermissionDenied(f"cannot remove {path}: {exc.strerror}") from None
        for link in links:  # leave no empty default.target.wants/ behind
            with contextlib.suppress(OSError):
                link.parent.rmdir()
    disable = service.disable_commands(t.platform, t.mode, uid=os.getuid()) if removed else []

    if as_json:
        click.echo(render.to_json({
            "action": "uninstall", "platform": t.platform, "mode": t.mode,
            "path": str(t.path), "dry_run": dry_run,
            "removed": [] if dry_run else [str(p) for p in removed],
            "would_remove": [str(p) for p in removed] if dry_run else [],
            "disable": disable,
        }))
        return
    if not removed:
        click.echo(f"nothing to remove: {t.path} does not exist")
        return
    verb = "would remove" if dry_run else "removed"
    for path in removed:
        click.echo(f"{verb} {path}")
    echo_block("stop the running service with:", disable, err=False)
