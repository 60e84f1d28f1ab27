from __future__ import annotations

from pathlib import Path

import pytest

from naosd.config import (
    SETTINGS,
    SocketChoice,
    default_paths,
    load,
    locate_socket,
    render_default_config,
)
from naosd.errors import ConfigError

HOME = Path("/home/u")


def cfg(environ=None, **kw):
    return load(environ=environ or {}, uid=1000, home=HOME, **kw)


def test_defaults_work_with_no_file_and_no_environment():
    c = cfg()
    assert c.mode == "user"
    assert c.socket == Path("/tmp/naos-1000/naosd.sock")
    assert c.state_dir == HOME / ".local/state/naos"
    assert c.storage_db == HOME / ".local/state/naos/naos.db"
    assert c.config_file == HOME / ".config/naos/naosd.toml"
    assert not c.config_file_loaded
    assert c.dashboard_host == "127.0.0.1"


def test_xdg_variables_move_everything():
    c = cfg({"XDG_RUNTIME_DIR": "/run/user/1000", "XDG_STATE_HOME": "/s",
             "XDG_CONFIG_HOME": "/c"})
    assert c.socket == Path("/run/user/1000/naos/naosd.sock")
    assert c.state_dir == Path("/s/naos")
    assert c.config_file == Path("/c/naos/naosd.toml")


def test_system_mode_honours_systemd_directories():
    paths = default_paths("system", {"STATE_DIRECTORY": "/var/lib/naos:/other",
                                     "RUNTIME_DIRECTORY": "/run/naos"}, 0, Path("/root"))
    assert paths.state_dir == Path("/var/lib/naos")
    assert paths.runtime_dir == Path("/run/naos")
    assert default_paths("system", {}, 0, Path("/root")).config_file == Path(
        "/etc/naos/naosd.toml")


def test_precedence_cli_over_environment_over_file_over_default(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text('[daemon]\nlog_level = "warning"\nrequest_timeout = 5\n'
                 '[dashboard]\nport = 9000\n')
    env = {"NAOS_LOG_LEVEL": "error", "NAOS_DASHBOARD_PORT": "9100"}
    c = cfg(env, config_file=f, cli={"dashboard.port": "9200"})
    assert c.dashboard_port == 9200
    assert c.sources["dashboard.port"] == "command line"
    assert c.log_level == "error"
    assert c.sources["daemon.log_level"] == "environment $NAOS_LOG_LEVEL"
    assert c.request_timeout == 5.0
    assert c.sources["daemon.request_timeout"] == str(f)
    assert c.shutdown_timeout == 10.0


@pytest.mark.parametrize(("text", "match"), [
    pytest.param('[daemon]\nlog_level = "loud"\n', r"daemon\.log_level: must be one of",
                 id="choice"),
    pytest.param("[daemon]\nbogus = 1\n", r"daemon\.bogus: unknown setting", id="unknown"),
    pytest.param("[dashboard]\nport = 70000\n", r"dashboard\.port: must be between",
                 id="range"),
    pytest.param("[dashboard]\nport = true\n", r"dashboard\.port: expected a number",
                 id="bool-for-int"),
    pytest.param("daemon = 3\n", r"daemon: expected a \[daemon\] table", id="not-table"),
    pytest.param("[daemon\n", "not valid TOML", id="syntax"),
])
def test_bad_config_names_file_key_and_reason(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        cfg(config_file=f)
    assert str(f) in str(info.value)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"\$NAOS_SHUTDOWN_TIMEOUT: daemon.shutdown_timeout"):
        cfg({"NAOS_SHUTDOWN_TIMEOUT": "soon"})


def test_explicit_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        cfg(config_file=tmp_path / "missing.toml")


def test_naos_config_variable_points_at_the_file(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text('[storage]\nsynchronous = "normal"\n')
    assert cfg({"NAOS_CONFIG": str(f)}).storage_synchronous == "normal"


def test_overlong_socket_path_is_refused():
    with pytest.raises(ConfigError, match="Unix sockets allow"):
        cfg(cli={"daemon.socket": "/tmp/" + "x" * 120})


def test_printed_default_config_round_trips(tmp_path):
    c = cfg()
    f = tmp_path / "printed.toml"
    f.write_text(render_default_config(c))
    again = cfg(config_file=f)
    for s in SETTINGS:
        assert getattr(again, s.attr) == getattr(c, s.attr), s.key


# -- naosctl's lenient view: only the socket matters (issue 12.6) -----------------------


def locate(environ):
    return locate_socket(mode="user", environ=environ, uid=1000, home=HOME)


def test_locate_socket_ignores_other_variables_and_defaults():
    choice = locate({"NAOS_LOG_LEVEL": "verbose", "NAOS_DASHBOARD_PORT": "x"})
    assert choice == SocketChoice(Path("/tmp/naos-1000/naosd.sock"), None)
    assert locate({"NAOS_SOCKET": "/run/s"}) == SocketChoice(Path("/run/s"), None)


def test_locate_socket_takes_the_file_socket_and_warns_once_about_the_rest(tmp_path):
    f = tmp_path / "naosd.toml"
    f.write_text('[daemon]\nsocket = "/run/x/s"\nlog_levl = "debug"\n'
                 '[dashboard]\nport = "many"\nsurprise = 3\n')
    choice = locate({"NAOS_CONFIG": str(f)})
    assert choice.path == Path("/run/x/s")
    assert choice.warning is not None and "\n" not in choice.warning
    assert f"{f}: daemon.log_levl: unknown setting (and 2 more)" in choice.warning


@pytest.mark.parametrize("text", [
    pytest.param("[daemon\n", id="syntax"),
    pytest.param("daemon = 3\n", id="not-a-table"),
])
def test_locate_socket_falls_back_to_the_default_when_the_file_is_unusable(tmp_path, text):
    f = tmp_path / "naosd.toml"
    f.write_text(text)
    choice = locate({"NAOS_CONFIG": str(f), "XDG_RUNTIME_DIR": "/run/user/7"})
    assert choice.path == Path("/run/user/7/naos/naosd.sock")
    assert choice.warning is not None and str(f) in choice.warning


def test_locate_socket_warns_when_the_named_file_is_missing(tmp_path):
    choice = locate({"NAOS_CONFIG": str(tmp_path / "gone.toml")})
    assert choice.path == Path("/tmp/naos-1000/naosd.sock")
    assert "config file not found" in (choice.warning or "")


@pytest.mark.parametrize(("environ", "text", "match"), [
    pytest.param({}, "[daemon]\nsocket = 5\n", r"naosd\.toml: daemon\.socket: expected a string",
                 id="file-type"),
    pytest.param({}, f'[daemon]\nsocket = "/{"x" * 120}"\n',
                 r"naosd\.toml: daemon\.socket: path is 121 bytes", id="file-length"),
    pytest.param({"NAOS_SOCKET": "/" + "y" * 120}, "",
                 r"\$NAOS_SOCKET: daemon\.socket: path is", id="env-length"),
])
def test_a_broken_socket_setting_is_a_config_error(tmp_path, environ, text, match):
    f = tmp_path / "naosd.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        locate({"NAOS_CONFIG": str(f), **environ})
