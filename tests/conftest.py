from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Naosd, reap, short_tempdir, start_naosd
from hypothesis import settings

# Property tests check behaviour, never speed: the machines are shared and noisy,
# so no example may fail for taking longer than hypothesis's 200 ms default.
settings.register_profile("naos", deadline=None)
settings.load_profile("naos")


@pytest.fixture
def base() -> Iterator[Path]:
    with short_tempdir() as path:
        yield path


@pytest.fixture
def daemon(base: Path) -> Iterator[Naosd]:
    """A real naosd on a temporary socket and state dir; reaped afterwards,
    and the test fails if any process it started had to be killed."""
    d = start_naosd(base)
    try:
        yield d
    finally:
        survivors = reap(d)
        assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


@pytest.fixture
def daemons(base: Path) -> Iterator[list[Naosd]]:
    """naosd on one state dir, started again by the test (``restart``) as often
    as it likes after stopping or killing it; the last is stopped and every
    one reaped afterwards, and the test fails if a process had to be killed."""
    started = [start_naosd(base)]
    try:
        yield started
    finally:
        started[-1].stop()
        survivors = [pid for d in started for pid in reap(d)]
        assert not survivors, f"processes outlived naosd: {survivors}"


def restart(daemons: list[Naosd]) -> Naosd:
    """A new naosd on the last one's state (which was stopped or killed)."""
    last = daemons[-1]
    daemons.append(start_naosd(last.socket.parent, state_dir=last.state_dir))
    return daemons[-1]
