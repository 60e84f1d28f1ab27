"""Agent code snapshots on a real filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from naosd.agents import snapshots
from naosd.errors import InvalidRequest


def test_a_file_is_copied_by_digest_and_the_original_can_go(tmp_path: Path) -> None:
    src = tmp_path / "h.py"
    src.write_text("def handle(m, ctx):\n    return 1\n")
    snap = snapshots.take(src, tmp_path / "code")
    assert (snap.kind, snap.entry, snap.files) == ("python", "h.py", 1)
    assert snap.root == tmp_path / "code" / snap.digest and len(snap.digest) == 64
    src.unlink()
    assert snap.entry_path.read_text().startswith("def handle")
    assert not os.access(snap.entry_path, os.W_OK) or os.getuid() == 0


def test_same_code_same_digest_edited_code_new_digest(tmp_path: Path) -> None:
    src = tmp_path / "h.py"
    src.write_text("A = 1\n")
    first = snapshots.take(src, tmp_path / "code")
    again = snapshots.take(src, tmp_path / "code")
    src.write_text("A = 2\n")
    edited = snapshots.take(src, tmp_path / "code")
    assert first.digest == again.digest != edited.digest
    assert first.entry_path.read_text() == "A = 1\n"


def test_a_directory_keeps_its_modules_and_finds_its_entry(tmp_path: Path) -> None:
    pkg = tmp_path / "triage"
    (pkg / "lib").mkdir(parents=True)
    (pkg / "agent.py").write_text("from lib import x\n")
    (pkg / "lib" / "x.py").write_text("X = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    snap = snapshots.take(pkg, tmp_path / "code")
    assert snap.entry == "agent.py" and snap.files == 2
    assert (snap.root / "lib" / "x.py").read_text() == "X = 1\n"


@pytest.mark.parametrize("make", ["symlink_member", "symlink_source", "no_entry", "relative",
                                  "fifo", "missing", "wrong_suffix"])
def test_what_cannot_be_snapshotted_is_refused_naming_the_path(tmp_path: Path,
                                                                make: str) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "agent.py").write_text("x = 1\n")
    source = pkg
    match make:
        case "symlink_member":
            (pkg / "secret").symlink_to("/etc/passwd")
        case "symlink_source":
            source = tmp_path / "link.py"
            source.symlink_to(pkg / "agent.py")
        case "no_entry":
            (pkg / "agent.py").rename(pkg / "other.py")
        case "relative":
            source = Path("pkg")
        case "fifo":
            os.mkfifo(pkg / "pipe")
        case "missing":
            source = tmp_path / "nope.py"
        case "wrong_suffix":
            source = tmp_path / "h.txt"
            source.write_text("x")
    with pytest.raises(InvalidRequest):
        snapshots.take(source, tmp_path / "code")
    assert not any((tmp_path / "code").glob("[0-9a-f]*")) if (tmp_path / "code").exists() \
        else True


def test_a_tree_over_the_limit_is_refused(tmp_path: Path) -> None:
    pkg = tmp_path / "big"
    pkg.mkdir()
    for i in range(5):
        (pkg / f"m{i}.py").write_text("x" * 100)
    (pkg / "agent.py").write_text("")
    with pytest.raises(InvalidRequest, match="over 2000 files or 300 bytes"):
        snapshots.take(pkg, tmp_path / "code", max_total=300)


def test_a_dry_snapshot_says_what_it_would_be_and_writes_nothing(tmp_path: Path) -> None:
    from actors.domain.definitions import AgentDef

    src = tmp_path / "h.py"
    src.write_text("A = 1\n")
    code = tmp_path / "code"
    agent = AgentDef("h", "python", str(src))
    dry = snapshots.snapshot_definition(agent, code, write=False)
    assert not code.exists()
    real = snapshots.snapshot_definition(agent, code)
    assert dry == real and Path(real.source).read_text() == "A = 1\n"
