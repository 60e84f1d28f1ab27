"""Agent code snapshots: what an agent runs is a copy naos keeps, by digest.

``create --source FILE|DIR`` copies the code into ``<state dir>/code/<sha256>/``
and the agent runs that copy: editing or deleting the original changes
nothing until ``naosctl update NAME --source ...`` rolls out a new snapshot
(both digests are audited).  The digest covers every file's relative path
and bytes, so two agents with the same code share one snapshot.

Only regular files are copied; a symlink, a device, a file over
``MAX_FILE_BYTES`` or a tree over ``MAX_TOTAL_BYTES``/``MAX_FILES`` is
refused with the path that broke the rule.  A snapshot directory is written
under a temporary name and renamed into place, so a crash never leaves a
half-copied snapshot under a digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from actors.domain.definitions import AgentDef
from naosd.errors import InvalidRequest

MAX_FILE_BYTES: Final = 16 << 20
MAX_TOTAL_BYTES: Final = 64 << 20
MAX_FILES: Final = 2000
SKIP_DIRS: Final = frozenset({"__pycache__", ".git", ".venv", "node_modules", ".mypy_cache",
                              ".ruff_cache", ".pytest_cache"})
ENTRY_CANDIDATES: Final = ("agent.py", "handler.py", "main.py", "module.wasm")


@dataclass(frozen=True, slots=True)
class Snapshot:
    digest: str  # sha256 over (relative path, bytes) of every file
    root: Path  # <state>/code/<digest>
    entry: str  # the file the agent loads, relative to root
    kind: str  # python or wasm
    files: int
    bytes: int

    @property
    def entry_path(self) -> Path:
        return self.root / self.entry


def take(source: Path, code_dir: Path, *, entry: str | None = None,
         max_total: int = MAX_TOTAL_BYTES, write: bool = True) -> Snapshot:
    """Copy ``source`` (a ``.py``/``.wasm`` file or a directory) into ``code_dir``
    (with ``write=False``: only say what the snapshot would be).

    Raises:
        InvalidRequest: the source is missing, not absolute, not a regular
            file or directory, has a forbidden member, is too large, or has
            no entry file.
    """
    files, chosen, kind = _gather(source, entry, max_total)
    digest = digest_of(files)
    root = code_dir / digest
    if write and not root.is_dir():
        _write(files, code_dir, root)
    return Snapshot(digest, root, chosen, kind, len(files), sum(len(b) for b in files.values()))


def _gather(source: Path, entry: str | None, max_total: int
            ) -> tuple[dict[str, bytes], str, str]:
    """The files of ``source``, its entry file and kind (see :func:`take`)."""
    if not source.is_absolute():
        raise InvalidRequest(f"source must be an absolute path, got {str(source)!r}")
    try:
        info = source.lstat()
    except OSError as exc:
        raise InvalidRequest(f"source {source}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise InvalidRequest(f"source {source} is a symlink: name the file it points to")
    if stat.S_ISREG(info.st_mode):
        files = {source.name: _read(source, source.name)}
        chosen = source.name
    elif stat.S_ISDIR(info.st_mode):
        files = _collect(source, max_total)
        chosen = _entry(files, entry, source)
    else:
        raise InvalidRequest(f"source {source} is neither a file nor a directory")
    return files, chosen, _kind(chosen, source)


def digest_of(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def _read(path: Path, rel: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InvalidRequest(f"source member {rel} is not a regular file")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidRequest(f"source member {rel} is over {MAX_FILE_BYTES >> 20} MiB")
    return data


def _collect(root: Path, max_total: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InvalidRequest(f"source member {rel} is a symlink (copy the file in)")
            if not stat.S_ISREG(mode):
                raise InvalidRequest(f"source member {rel} is not a regular file")
            files[rel] = _read(path, rel)
            total += len(files[rel])
            if len(files) > MAX_FILES or total > max_total:
                raise InvalidRequest(f"source {root} is over {MAX_FILES} files or "
                                     f"{max_total} bytes")
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise InvalidRequest(f"source member {Path(dirpath, d).relative_to(root)} "
                                     "is a symlink")
    if not files:
        raise InvalidRequest(f"source {root} holds no files")
    return files


def _entry(files: dict[str, bytes], entry: str | None, root: Path) -> str:
    if entry is not None:
        if entry not in files:
            raise InvalidRequest(f"entry {entry!r} is not a file in {root}")
        return entry
    for candidate in ENTRY_CANDIDATES:
        if candidate in files:
            return candidate
    raise InvalidRequest(f"source {root}: name the entry file (none of "
                         f"{', '.join(ENTRY_CANDIDATES)} is there)")


def _kind(entry: str, source: Path) -> str:
    if entry.endswith(".py"):
        return "python"
    if entry.endswith(".wasm"):
        return "wasm"
    raise InvalidRequest(f"source {source}: expected a .py handler or a .wasm module")


def _write(files: dict[str, bytes], code_dir: Path, root: Path) -> None:
    code_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=code_dir))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for dirpath, _, _ in os.walk(tmp, topdown=False):
            os.chmod(dirpath, 0o500)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():  # someone else put the same digest in place: fine
                raise
    finally:
        if tmp.exists():
            remove(tmp)


def remove(root: Path) -> None:
    """Delete a snapshot (its directories are read-only)."""
    for dirpath, _, _ in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(root, ignore_errors=True)


def snapshot_definition(definition: AgentDef, code_dir: Path, *, entry: str | None = None,
                        write: bool = True) -> AgentDef:
    """``definition`` running a snapshot of its source (a template needs none):
    the source becomes the snapshot's entry file and its digest is recorded.
    With ``write=False`` nothing is copied: the definition the snapshot would
    give (to compare it with a stored one)."""
    if definition.source_kind == "template":
        return definition
    snap = take(Path(definition.source), code_dir, entry=entry, write=write)
    if snap.kind != definition.source_kind and definition.source_kind in ("python", "wasm"):
        raise InvalidRequest(f"source {definition.source}: its entry {snap.entry} is "
                             f"{snap.kind}, not {definition.source_kind}")
    return replace(definition, source_kind=snap.kind, source=str(snap.entry_path),
                   execution={**definition.execution, "digest": snap.digest})
