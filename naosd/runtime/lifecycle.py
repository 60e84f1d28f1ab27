"""Process lifecycle helpers: private directories, the single-instance lock,
stale-socket detection and ``sd_notify`` (written by hand, no package)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from naosd.errors import AlreadyRunning, ConfigError


def ensure_private_dir(path: Path, mode: int) -> None:
    """Create ``path`` (and parents) and make sure it has exactly ``mode``.

    Raises ConfigError if it exists but is not a directory or is owned by
    another user (someone could swap our socket or database)."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: exists and is not a directory")
    if st.st_uid != os.getuid() and os.getuid() != 0:
        raise ConfigError(
            f"{path}: owned by uid {st.st_uid}, not by us ({os.getuid()}); "
            "refusing to use it"
        )
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


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
