"""The settings that decide who may use the socket (naosd.config) and their
groups resolved to gids (naosd.control.access)."""

from __future__ import annotations

import grp
from pathlib import Path

import pytest

from naosd.config import load
from naosd.control.access import access_of
from naosd.control.roles import Group
from naosd.errors import ConfigError

HOME = Path("/home/u")


def cfg(environ=None, tmp: Path | None = None, text: str = ""):
    config_file = None
    if tmp is not None:
        config_file = tmp / "naosd.toml"
        config_file.write_text(text)
    return load(environ=environ or {}, uid=1000, home=HOME, config_file=config_file)


def test_defaults():
    c = cfg()
    assert (c.operator_group, c.reader_group) == ("", "")
    assert c.max_connections_per_uid == 32
    assert c.handshake_timeout == 2.0


def test_the_settings_come_from_the_environment_too():
    c = cfg({"NAOS_OPERATOR_GROUP": "ops", "NAOS_READER_GROUP": "naos",
             "NAOS_MAX_CONNECTIONS_PER_UID": "4"})
    assert (c.operator_group, c.reader_group, c.max_connections_per_uid) == ("ops", "naos", 4)


def test_socket_group_is_the_deprecated_name_of_operator_group(tmp_path: Path):
    c = cfg(tmp=tmp_path, text='[daemon]\nsocket_group = "naos"\n')
    assert c.operator_group == "naos"
    assert c.sources["daemon.operator_group"] == (
        f"{tmp_path}/naosd.toml (as daemon.socket_group, deprecated)")
    same = cfg(tmp=tmp_path, text='[daemon]\nsocket_group = "naos"\noperator_group = "naos"\n')
    assert same.operator_group == "naos"


def test_two_different_operator_groups_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError) as refused:
        cfg({"NAOS_OPERATOR_GROUP": "ops"}, tmp=tmp_path,
            text='[daemon]\nsocket_group = "naos"\n')
    assert str(refused.value) == (
        f"{tmp_path}/naosd.toml: daemon.socket_group: it is the old name of "
        "daemon.operator_group, which says 'ops' (environment $NAOS_OPERATOR_GROUP), not "
        "'naos'; keep only daemon.operator_group")


def test_per_uid_limit_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match=r"daemon\.max_connections_per_uid: must be between"):
        cfg({"NAOS_MAX_CONNECTIONS_PER_UID": "0"})


def test_groups_resolve_to_their_gids():
    users = grp.getgrgid(100).gr_name
    access = access_of(cfg({"NAOS_READER_GROUP": users, "NAOS_OPERATOR_GROUP": "root"}))
    assert access.readers == Group(users, 100)
    assert access.operators == Group("root", 0)


def test_a_group_that_does_not_exist_is_named():
    with pytest.raises(ConfigError, match=r"daemon\.reader_group: no group named 'no-such-grp'"):
        access_of(cfg({"NAOS_READER_GROUP": "no-such-grp"}))
