"""naosctl needs only the socket path (issue 12.6): a typo in naosd.toml or a bad
``NAOS_*`` variable must not stop the real naosctl from talking to a running daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Naosd, naosctl

pytestmark = pytest.mark.e2e


def config_file(daemon: Naosd) -> Path:
    # start_naosd points XDG_CONFIG_HOME at base/xdg-config; the daemon has read
    # it already, so what is written now is a typo made while it runs.
    path = Path(daemon.env["XDG_CONFIG_HOME"]) / "naos" / "naosd.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ctl(daemon: Naosd, *args: str, **env: str):
    return naosctl(*args, env={**daemon.env, **env})


def test_a_typo_elsewhere_in_the_file_is_one_warning(daemon: Naosd):
    path = config_file(daemon)
    path.write_text(f'[daemon]\nsocket = "{daemon.socket}"\nlog_levl = "debug"\n'
                    '[dashboard]\nport = "seventy"\n')
    result = ctl(daemon, "ping")
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("naosctl: warning: ") and str(path) in warnings[0]
    assert "daemon.log_levl: unknown setting (and 1 more)" in warnings[0]


def test_bad_naos_variables_are_not_naosctls_business(daemon: Naosd):
    config_file(daemon).write_text(f'[daemon]\nsocket = "{daemon.socket}"\n')
    result = ctl(daemon, "status", "--json", NAOS_LOG_LEVEL="verbose",
                 NAOS_DASHBOARD_PORT="many", NAOS_SHUTDOWN_TIMEOUT="soon")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_broken_daemon_socket_is_a_clear_exit_6(daemon: Naosd):
    path = config_file(daemon)
    path.write_text("[daemon]\nsocket = 7\n")
    result = ctl(daemon, "ping")
    assert result.returncode == 6
    assert result.stderr.strip() == (f"naosctl: {path}: daemon.socket: expected a string, "
                                      "got int")
    result = ctl(daemon, "ping", NAOS_SOCKET=str(daemon.socket))  # the variable wins
    assert result.returncode == 0, result.stderr


def test_an_unreadable_file_falls_back_to_the_default_socket(daemon: Naosd):
    path = config_file(daemon)
    path.write_text("[daemon\n")
    result = ctl(daemon, "ping")
    default = Path(daemon.env["XDG_RUNTIME_DIR"]) / "naos" / "naosd.sock"
    assert result.returncode == 4  # no daemon there: unreachable, not "not configured"
    first, *rest = result.stderr.splitlines()
    assert first.startswith(f"naosctl: warning: {path}: not valid TOML")
    assert str(default) in first and rest
