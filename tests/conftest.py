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
