"""naosd's composition root: argv -> Config -> lock -> actors -> event loop.

Exit codes: 0 clean stop, 1 failure (including "already running", and a
state directory, database or socket path that cannot be used: read-only,
full, not a directory; one error line names the path and the reason),
2 usage, 6 configuration error (LSB "not configured")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from naosd import __version__, telemetry
from naosd.config import Config, load, render_default_config
from naosd.control.access import access_of
from naosd.errors import AlreadyRunning, ConfigError, NaosError
from naosd.runtime.lifecycle import (
    InstanceLock,
    SdNotifier,
    check_runtime_dir,
    clear_stale_socket,
    ensure_private_dir,
)

log = logging.getLogger("naosd")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="naosd", description="naos daemon: hosts the agent runtime, "
        "answers naosctl on a Unix socket, serves the dashboard.")
    ap.add_argument("--version", action="version", version=f"naosd {__version__}")
    ap.add_argument("--config", type=Path, help="TOML config file")
    ap.add_argument("--system", action="store_true",
                    help="system mode: /etc/naos, /var/lib/naos, /run/naos")
    ap.add_argument("--socket", help="control socket path")
    ap.add_argument("--state-dir", help="state directory (database, tokens)")
    ap.add_argument("--db", help="SQLite database file")
    ap.add_argument("--log-level", help="debug, info, warning or error")
    ap.add_argument("--log-format", help="text or json")
    ap.add_argument("--dashboard-host", help="dashboard bind address")
    ap.add_argument("--dashboard-port", help="dashboard port (0: any free port)")
    ap.add_argument("--no-dashboard", action="store_true", help="do not serve it")
    ap.add_argument("--check-config", action="store_true",
                    help="validate the configuration and exit")
    ap.add_argument("--print-default-config", action="store_true",
                    help="print the effective configuration as TOML and exit")
    return ap


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "daemon.socket": args.socket, "daemon.state_dir": args.state_dir,
        "storage.db": args.db, "daemon.log_level": args.log_level,
        "daemon.log_format": args.log_format,
        "dashboard.host": args.dashboard_host, "dashboard.port": args.dashboard_port,
        "dashboard.enabled": False if args.no_dashboard else None,
    }


def load_config(args: argparse.Namespace) -> Config:
    return load(
        mode="system" if args.system else "user", config_file=args.config,
        environ=os.environ, cli=cli_overrides(args), uid=os.getuid(), home=Path.home(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        sys.stderr.write(f"naosd: configuration error: {exc.message}\n")
        return ConfigError.exit_code
    if args.print_default_config:
        sys.stdout.write(render_default_config(config))
        return 0
    if args.check_config:
        source = str(config.config_file) if config.config_file_loaded else "defaults"
        sys.stdout.write(f"configuration OK ({source})\n")
        return 0
    from naosd.logs import set_level_and_format

    set_level_and_format(config.log_level, config.log_format)
    try:
        return run(config, lambda: load_config(args))
    except AlreadyRunning as exc:
        log.error("%s", exc.message)
        return 1
    except ConfigError as exc:
        log.error("configuration error: %s", exc.message)
        return ConfigError.exit_code
    except NaosError as exc:
        log.error("%s", exc.message)
        return 1
    except OSError as exc:  # a path naosd needs is unusable: one line, not a traceback
        log.error("%s", describe_os_error(exc))
        log.debug("where it failed", exc_info=True)
        return 1


def describe_os_error(exc: OSError) -> str:
    """``cannot use /var/lib/naos: Read-only file system``."""
    reason = exc.strerror or str(exc)
    return f"cannot use {exc.filename}: {reason}" if exc.filename else reason


def prepare_dirs(config: Config) -> None:
    """The state directory, and the socket's directory checked even as root
    (lifecycle.check_runtime_dir): naosd's own default one is created and
    given its mode (and the group that may reach the socket); one named by
    daemon.socket is only checked."""
    ensure_private_dir(config.state_dir, 0o700)
    config.storage_db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    group = access_of(config).socket_group
    managed = not config.runtime_dir.exists() or "daemon.socket" not in config.sources
    if managed:
        ensure_private_dir(config.runtime_dir, 0o750 if config.mode == "system" or group
                           else 0o700, None if group is None else group.gid)
    check_runtime_dir(config.runtime_dir, managed=managed)
    if group is not None and not managed and not _reachable(config.runtime_dir, group.gid):
        log.warning("group %s cannot reach %s (mode %04o): give the directory to the group "
                    "(chgrp, chmod g+x) or its members cannot connect", group.name,
                    config.runtime_dir, stat.S_IMODE(config.runtime_dir.stat().st_mode))


def _reachable(directory: Path, gid: int) -> bool:
    st = directory.stat()
    return bool(st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010))


def run(config: Config, reload: Any) -> int:
    """Run the daemon until it is asked to stop.  Raises NaosError subclasses
    for start-up failures (already running, bad config, storage)."""
    prepare_dirs(config)
    lock = InstanceLock(config.lock_file)
    lock.acquire()
    runtime = None
    socket_created = False
    try:
        clear_stale_socket(config.socket)
        audit_key = _load_audit_key(config)
        runtime = _start_actors(config)
        socket_created = True
        _start_telemetry(config)  # its exporter thread: only once the actors are forked
        from naosd.daemon import Daemon

        notifier = SdNotifier(os.environ.get("NOTIFY_SOCKET"),
                              os.environ.get("WATCHDOG_USEC"))
        daemon = Daemon(config, runtime, reload=reload, notifier=notifier,
                        audit_key=audit_key)
        return asyncio.run(daemon.run())
    finally:
        # Spans still queued get 2 s at most: a collector that is down cannot hold the stop.
        telemetry.stop(timeout_s=min(2.0, config.shutdown_timeout / 2))
        if runtime is not None:
            runtime.shutdown(config.shutdown_timeout / 2)
        if socket_created:
            with contextlib.suppress(FileNotFoundError):
                config.socket.unlink()
        lock.release()
        log.info("stopped")


def _start_telemetry(config: Config) -> None:
    """Export traces if ``telemetry.enabled`` (naosd.telemetry; off: nothing is loaded)."""
    if not config.telemetry_enabled:
        return
    resource = {"service.instance.id": config.cluster_node} if config.cluster_node else {}
    telemetry.start(telemetry.Settings(config.telemetry_otlp_endpoint,
                                       config.telemetry_service_name, resource))
    log.info("exporting traces over OTLP/HTTP to %s",
             config.telemetry_otlp_endpoint or "the OTEL_EXPORTER_OTLP_* endpoint")


def _load_audit_key(config: Config) -> Any:
    """Load (or create) the audit key and install it for this process and the
    actors forked from it: every Store then signs the checkpoint with it."""
    from naosd.storage.audit_key import load_or_create
    from naosd.storage.checkpoint import install_process_key

    assert config.audit_key_file is not None
    key = load_or_create(config.audit_key_file)
    install_process_key(key.key)
    if key.created:
        log.warning("created the audit key %s (key id %s); back it up with the config, "
                    "not with the state dir", key.path, key.key_id)
    return key


def _start_actors(config: Config) -> Any:
    """Start the hardened actor system.  Must run before any thread exists
    and before the socket or database are opened: every actor is a forked
    process and inherits what is open."""
    # Thespian's own log defaults to a world-readable /tmp/thespian.log.
    os.environ["THESPLOG_FILE"] = str(config.state_dir / "thespian.log")
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1 << 20))
    from naosd.runtime.actorsys import ActorRuntime, set_child_subreaper

    set_child_subreaper()
    record = config.state_dir / "actors.session"  # what a killed naosd left running
    if not config.cluster_enabled:
        secret = os.urandom(32)
        _host_agents(config, secret)
        return ActorRuntime.start(secret=secret, record=record,
                                  prefer_port=config.actors_admin_port or None)
    from naosd.runtime.cluster import setup

    cluster = setup(config)
    if not cluster.is_leader:
        from naosd.runtime import fence

        fence.FENCE_DIR = config.state_dir / "cluster"  # inherited by every actor
        shutil.rmtree(fence.FENCE_DIR, ignore_errors=True)  # a previous run's: all dead
    log.info("cluster mode: node %s on %s, leader %s", cluster.node, cluster.address,
             "this node" if cluster.is_leader else cluster.leader)
    _host_agents(config, cluster.secret)
    return ActorRuntime.start(
        secret=cluster.secret, bind_host=cluster.host, admin_port=cluster.port,
        capabilities=cluster.thespian_capabilities(),
        convention_period=cluster.reregistration_period(), record=record)


def _host_agents(config: Config, secret: bytes) -> None:
    """Where agent handlers connect and what they may never be granted: set
    before the actor system starts, so every agent actor inherits it."""
    from naosd.runtime import hosting

    protected = (config.state_dir, config.runtime_dir, config.config_file.parent, Path.home())
    hosting.configure(secret, agent_socket=config.runtime_dir / "agents.sock",
                      state_dir=config.state_dir,
                      protected=tuple(str(p) for p in protected))


if __name__ == "__main__":
    raise SystemExit(main())
