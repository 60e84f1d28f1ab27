"""Where agent handlers are hosted: facts every agent actor needs.

naosd sets them once, before the actor system starts (every actor is a
forked process and inherits them, as it inherits the frame key): the agent
socket's path, the state dir (snapshots and work dirs live under it), the
paths no handler may ever be granted, and the key agent channel tokens are
made with (derived from the daemon's secret; the secret itself stays where
it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from naosd.runtime.agent_link import channel_key


@dataclass(frozen=True, slots=True)
class Hosting:
    agent_socket: Path
    state_dir: Path
    protected: tuple[str, ...]  # state dir, runtime dir, config file, $HOME
    key: bytes

    def work_dir(self, agent: str) -> Path:
        """The agent's private, writable directory (kept across restarts)."""
        return self.state_dir / "agents" / agent / "work"


_HOSTING: Hosting | None = None


def configure(secret: bytes, *, agent_socket: Path, state_dir: Path,
              protected: tuple[str, ...]) -> Hosting:
    """Set the facts (naosd, before the actor system starts)."""
    global _HOSTING
    _HOSTING = Hosting(agent_socket, state_dir, protected, channel_key(secret))
    return _HOSTING


def current() -> Hosting | None:
    """The facts this process inherited (None: naosd set none, e.g. a test
    runtime without agents)."""
    return _HOSTING
