"""Process lifecycle helpers: private directories (and the socket's), the
single-instance lock, stale-socket detection and ``sd_notify`` (written by
hand, no package)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import socket
import stat
from pathlib import Path

from naosd.errors import AlreadyRunning, ConfigError


def ensure_private_dir(path: Path, mode: int, gid: int | None = None) -> None:
    """Create ``path`` (and parents) and make sure it has exactly ``mode``
    (and group ``gid`` when given).

    Raises ConfigError if it exists but is not a directory or is owned by
    another user, even when naosd runs as root: its owner could swap our
    socket or database."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: exists and is not a directory")
    if st.st_uid != os.getuid():
        raise ConfigError(_not_ours(path, st.st_uid))
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
    if gid is not None and st.st_gid != gid:
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            raise ConfigError(f"cannot give {path} to gid {gid}: naosd's user must be a "
                              "member of the group that may reach the socket") from None


def check_runtime_dir(path: Path, *, managed: bool) -> None:
    """Refuse a socket directory that someone else could swap the socket in.

    The directory must be a directory (not a symlink) owned by naosd's uid,
    root included; one naosd does not manage (``daemon.socket`` names it) must
    not be writable by its group or everyone.  Its parent must not be
    writable by everyone unless sticky, nor owned by another user than us
    or root.  Raises ConfigError with one line: the path, the owner, what to do."""
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: exists and is not a directory; refusing to put the "
                          "socket there (point daemon.socket at a directory of naosd's user)")
    if st.st_uid != os.getuid():
        raise ConfigError(_not_ours(path, st.st_uid))
    if not managed and stat.S_IMODE(st.st_mode) & 0o022:
        raise ConfigError(f"{path}: writable by {_writers(st.st_mode)} (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}), who could replace the socket; "
                          f"run chmod go-w {path} or point daemon.socket at a private directory")
    parent = path.parent.stat()
    if parent.st_mode & 0o002 and not parent.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{path.parent}: writable by everyone and not sticky, so anyone "
                          f"could replace {path}; put the socket in a private directory")
    if parent.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{path.parent}: owned by {_who(parent.st_uid)}, who could replace "
                          f"{path}; put the socket under a directory of naosd's user or root")


def _not_ours(path: Path, owner: int) -> str:
    return (f"{path}: owned by {_who(owner)}, not by naosd's {_who(os.getuid())}: its owner "
            "could replace the socket or files in it; remove it (after checking what it "
            "holds) or point naosd at another directory")


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _writers(mode: int) -> str:
    return "its group and everyone" if mode & 0o022 == 0o022 else (
        "everyone" if mode & 0o002 else "its group")


class InstanceLock:
    """An exclusive ``flock`` on a file, held for the daemon's lifetime.

    The file also records the holder's pid, for the error a second daemon
    prints.  The lock dies with the process, so a killed daemon never leaves
    a stale lock behind."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise AlreadyRunning(
                    f"naosd is already running (pid {holder}; lock {self.path})"
                ) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: name the file, as open() errors do
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def socket_in_use(path: Path) -> bool:
    """True if a live server accepts connections on the Unix socket ``path``.

    Like supervisor's ``checkused``: only a failed ``connect()`` makes an
    existing socket file stale."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def clear_stale_socket(path: Path) -> bool:
    """Remove ``path`` if it is a dead socket.  Returns True if removed.

    Raises AlreadyRunning if a live server answers there, ConfigError if the
    path is something other than a socket (we never delete user files)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path}: exists and is not a socket; refusing to replace it")
    if socket_in_use(path):
        raise AlreadyRunning(f"another server is already answering on {path}")
    path.unlink()
    return True


class SdNotifier:
    """Speaks systemd's notify protocol over ``$NOTIFY_SOCKET`` (a datagram
    socket; a leading ``@`` means the abstract namespace).  Silent no-op when
    the variable is unset."""

    def __init__(self, notify_socket: str | None, watchdog_usec: str | None) -> None:
        self._addr = notify_socket or None
        if self._addr and self._addr.startswith("@"):
            self._addr = "\0" + self._addr[1:]
        self.watchdog_interval: float | None = None
        if watchdog_usec and watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            self.watchdog_interval = int(watchdog_usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *fields: str) -> None:
        if self._addr is None:
            return
        payload = "\n".join(fields).encode()
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s,
            contextlib.suppress(OSError),
        ):
            s.sendto(payload, self._addr)
