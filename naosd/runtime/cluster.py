"""Cluster mode at start: what naosd hands Thespian to join a convention.

Only imported when ``cluster.enabled`` is on (see docs/cluster.md). The
convention is Thespian's: the leader's admin address is every member's
``Convention Address.IPv4``; a node advertises ``naos.node`` (its name) and
``naos.capabilities`` so agents can be pinned to it. Every frame between
nodes carries the HMAC of the shared secret (naosd.runtime.actorsys), which is why
all nodes of a convention read the same secret file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from actors.domain.placement import ADDRESS_CAPABILITY, CAPS_CAPABILITY, NODE_CAPABILITY
from naosd.config import Config, parse_host_port
from naosd.errors import ConfigError
from naosd.runtime.actorsys import MIN_SECRET_SIZE

MAX_SECRET_FILE = 4096


@dataclass(frozen=True, slots=True)
class ClusterSetup:
    node: str
    host: str
    port: int
    leader: str  # "host:port"
    is_leader: bool
    capabilities: tuple[str, ...]
    secret: bytes
    heartbeat_s: float
    lost_after: int
    reregister_s: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def thespian_capabilities(self) -> dict[str, Any]:
        return {"Convention Address.IPv4": self.leader, NODE_CAPABILITY: self.node,
                ADDRESS_CAPABILITY: self.address, CAPS_CAPABILITY: list(self.capabilities)}

    def reregistration_period(self) -> timedelta:
        """Replaces Thespian's 7 min 22 s member re-registration period."""
        return timedelta(seconds=self.reregister_s)


def read_secret(path: Path) -> bytes:
    """The shared frame-MAC key: a regular file of ours, mode 0600 or stricter,
    at least MIN_SECRET_SIZE bytes (surrounding whitespace is ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cluster.secret_file: cannot open {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"cluster.secret_file: {path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if info.st_uid != os.getuid():
            raise ConfigError(f"cluster.secret_file: {path} is not owned by this user")
        if info.st_mode & 0o077:
            raise ConfigError(f"cluster.secret_file: {path} is readable by others "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it")
        secret = fh.read(MAX_SECRET_FILE + 1).strip()
    if len(secret) > MAX_SECRET_FILE:
        raise ConfigError(f"cluster.secret_file: {path} is larger than {MAX_SECRET_FILE} bytes")
    if len(secret) < MIN_SECRET_SIZE:
        raise ConfigError(f"cluster.secret_file: {path} holds {len(secret)} bytes; "
                          f"at least {MIN_SECRET_SIZE} are needed (e.g. "
                          "`head -c 48 /dev/urandom | base64 > FILE`)")
    return secret


def setup(config: Config) -> ClusterSetup:
    """Resolve the cluster settings (already validated by naosd.config)."""
    host, port = parse_host_port(config.cluster_bind, "cluster.bind")
    leader = config.cluster_leader or config.cluster_bind
    assert config.cluster_secret_file is not None
    return ClusterSetup(
        node=config.cluster_node, host=host, port=port, leader=leader,
        is_leader=leader == config.cluster_bind,
        capabilities=tuple(config.cluster_capabilities),
        secret=read_secret(config.cluster_secret_file),
        heartbeat_s=config.cluster_heartbeat_s, lost_after=config.cluster_lost_after,
        reregister_s=config.cluster_reregister_s)
