"""The roles' rule of a configuration: naosd's uid and the configured groups,
resolved to gids once, at start (naosd.control.roles holds the rule itself)."""

from __future__ import annotations

import grp
import os

from naosd.config import Config
from naosd.control.roles import Access, Group
from naosd.errors import ConfigError


def access_of(config: Config) -> Access:
    """ConfigError naming the setting when a group does not exist."""
    return Access(os.getuid(), _group(config.operator_group, "daemon.operator_group"),
                  _group(config.reader_group, "daemon.reader_group"))


def _group(name: str, setting: str) -> Group | None:
    if not name:
        return None
    try:
        return Group(name, grp.getgrnam(name).gr_gid)
    except KeyError:
        raise ConfigError(f"{setting}: no group named {name!r}") from None
