"""The socket's directory and the stale socket (naosd.runtime.lifecycle), on
real directories.  Tests run as root here, which is the case that matters:
a root naosd must not trust a directory another user made."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import short_tempdir

from naosd.errors import ConfigError
from naosd.runtime.lifecycle import check_runtime_dir, clear_stale_socket, ensure_private_dir

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown to another uid")


@pytest.fixture
def sticky() -> Iterator[Path]:
    """A world-writable sticky directory, like /tmp, of our own."""
    with short_tempdir() as base:
        os.chmod(base, 0o1777)
        yield base


@as_root
def test_a_dir_owned_by_another_uid_is_refused_even_as_root(sticky: Path):
    planted = sticky / "naos-0"
    planted.mkdir(mode=0o700)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as refused:
        ensure_private_dir(planted, 0o700)
    assert str(refused.value).startswith(
        f"{planted}: owned by uid {NOBODY} (nobody), not by naosd's uid 0 (root)")
    assert "remove it" in str(refused.value)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        check_runtime_dir(planted, managed=False)
    assert planted.stat().st_uid == NOBODY and (planted.stat().st_mode & 0o777) == 0o700


def test_our_own_dir_in_a_sticky_parent_is_fine(sticky: Path):
    ours = sticky / "naos"
    ensure_private_dir(ours, 0o700)
    check_runtime_dir(ours, managed=True)
    check_runtime_dir(ours, managed=False)


@pytest.mark.parametrize(("mode", "who"), [
    (0o770, "its group"), (0o707, "everyone"), (0o777, "its group and everyone")])
def test_a_named_dir_writable_by_others_is_refused(sticky: Path, mode: int, who: str):
    named = sticky / "d"
    named.mkdir()
    os.chmod(named, mode)
    with pytest.raises(ConfigError) as refused:
        check_runtime_dir(named, managed=False)
    assert str(refused.value).startswith(f"{named}: writable by {who} (mode {mode:04o})")
    check_runtime_dir(named, managed=True)  # naosd's own: ensure_private_dir fixes the mode


def test_a_world_writable_parent_without_the_sticky_bit_is_refused(sticky: Path):
    open_parent = sticky / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    ensure_private_dir(open_parent / "naos", 0o700)
    with pytest.raises(ConfigError, match=f"^{open_parent}: writable by everyone and not "
                                          "sticky"):
        check_runtime_dir(open_parent / "naos", managed=True)


@as_root
def test_a_parent_owned_by_another_user_is_refused(sticky: Path):
    theirs = sticky / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    ensure_private_dir(theirs / "naos", 0o700)
    with pytest.raises(ConfigError, match=f"^{theirs}: owned by uid {NOBODY}"):
        check_runtime_dir(theirs / "naos", managed=True)


def test_a_symlinked_dir_is_refused(sticky: Path):
    (sticky / "real").mkdir(mode=0o700)
    (sticky / "link").symlink_to(sticky / "real")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        check_runtime_dir(sticky / "link", managed=False)
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        ensure_private_dir(sticky / "link", 0o700)


def test_clearing_a_stale_socket_never_follows_a_symlink(sticky: Path):
    target = sticky / "elsewhere.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(target))
    dead.close()  # a dead socket: it would be removed if the link were followed
    link = sticky / "naosd.sock"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        clear_stale_socket(link)
    assert link.is_symlink() and target.exists()
    assert clear_stale_socket(target) and not target.exists()
