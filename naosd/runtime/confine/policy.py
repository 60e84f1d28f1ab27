"""What a confined agent handler may touch: the ``Confinement`` value (pure).

No I/O, no clock, no ``os.environ``: the paths naosd knows (its interpreter's
installation, the agent's source snapshot and work dir, the paths that must
never be granted) come in as a ``HostPaths`` value, and the agent definition's
fields as a plain mapping. Every error is an ``InvalidRequest`` naming the
field and the rule it broke.

Definition fields read here (all optional)::

    env          table of strings: the child's whole environment
    cwd          path; relative to the work dir, or absolute under it or the snapshot
    grants       list; "net" lets the handler open TCP/UDP sockets (IPv4/IPv6 only);
                 "read:/PATH" and "write:/PATH" let it read (or read and write)
                 beneath an absolute path that reaches nothing protected
    limits       memory_mb, cpu_seconds, open_files, processes
    confinement  "full" (default) or "none" (audited by the caller)
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from naosd.errors import InvalidRequest

MODES: Final = ("full", "none")
GRANTS: Final = ("net",)
PATH_GRANTS: Final = ("read:", "write:")  # read:/abs/path, write:/abs/path
MIB: Final = 1024 * 1024

DEFAULT_MEMORY_BYTES: Final = 1024 * MIB
MIN_MEMORY_BYTES: Final = 64 * MIB  # the interpreter alone maps ~30 MiB
MAX_MEMORY_BYTES: Final = 1 << 44
DEFAULT_OPEN_FILES: Final = 256
OPEN_FILES_RANGE: Final = (16, 65536)
MAX_PROCESSES: Final = 4096
MAX_CPU_SECONDS: Final = 366 * 86400

# Read-only, always: what the interpreter's extension modules load (libssl,
# libffi, libsqlite3 ...) through the dynamic loader, and the time zone data.
SYSTEM_READ_PATHS: Final = ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache",
                            "/etc/localtime", "/usr/share/zoneinfo", "/dev/urandom")
# Read and write: the one device a handler opens for writing.
DEVICE_WRITE_PATHS: Final = ("/dev/null",)
# Resolved in the child to its own /proc/<pid>: ``/proc/self/fd`` works, other
# processes' /proc entries (their ``mem``, ``environ``) stay out of reach.
PROC_SELF: Final = "/proc/self"
# Read-only, only with the "net" grant: name resolution and TLS trust roots.
NET_READ_PATHS: Final = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf",
                         "/etc/gai.conf", "/etc/host.conf", "/etc/services", "/etc/protocols",
                         "/etc/ssl", "/etc/pki", "/etc/ca-certificates",
                         "/usr/share/ca-certificates")

# Environment names a definition may not set: naosd's own and Thespian's
# settings, and what the dynamic loader or libc read before any confinement
# is applied (LD_PRELOAD would run code in the child before the bootstrap).
RESERVED_ENV_PREFIXES: Final = ("NAOS_", "THESPIAN_", "LD_")
RESERVED_ENV_NAMES: Final = ("GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH",
                             "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN", "MALLOC_TRACE")
LIMIT_KEYS: Final = ("memory_mb", "cpu_seconds", "open_files", "processes")


@dataclass(frozen=True, slots=True)
class Confinement:
    """Everything a confined handler process is allowed.

    ``memory_bytes`` and ``cpu_seconds`` of 0 mean "no limit"; ``processes``
    of 0 means the handler may start threads but no process, N > 0 lets it
    fork and caps its tasks (processes and threads) at N where the kernel
    counts them per user namespace. ``env`` is the child's exact
    environment, as sorted pairs."""

    read_paths: tuple[str, ...]
    write_paths: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    net: bool = False
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    cpu_seconds: int = 0
    open_files: int = DEFAULT_OPEN_FILES
    processes: int = 0
    mode: str = "full"

    def environ(self) -> dict[str, str]:
        return dict(self.env)

    def validated(self) -> Confinement:
        """This value, or InvalidRequest naming the first field that is wrong."""
        if self.mode not in MODES:
            raise InvalidRequest(f"confinement must be one of {', '.join(MODES)}, "
                                 f"not {self.mode!r}")
        if not isinstance(self.net, bool):
            raise InvalidRequest(f"net must be true or false, not {self.net!r}")
        for path in self.read_paths:
            check_path(path, "read path")
        if not self.write_paths:
            raise InvalidRequest("a confinement needs a work dir (no write path given)")
        for path in self.write_paths:
            check_path(path, "write path")
        check_path(self.cwd, "cwd", allow_root=True)
        if self.mode == "full" and not _beneath_any(self.cwd, self.read_paths + self.write_paths):
            raise InvalidRequest(f"cwd {self.cwd} is outside every path the handler may use")
        check_env(self.env)
        _check_int(self.memory_bytes, "memory_bytes", MIN_MEMORY_BYTES, MAX_MEMORY_BYTES)
        _check_int(self.cpu_seconds, "cpu_seconds", 1, MAX_CPU_SECONDS)
        _check_int(self.open_files, "open_files", *OPEN_FILES_RANGE, zero=False)
        _check_int(self.processes, "processes", 1, MAX_PROCESSES)
        return self


@dataclass(frozen=True, slots=True)
class HostPaths:
    """The paths naosd knows for one agent.

    ``interpreter``: the Python installation and naos's own packages (read);
    ``snapshot``: the agent's source snapshot (read); ``work``: its private
    work dir (read-write); ``protected``: what no grant may contain (the state
    dir, the runtime dir, the config file, ``$HOME``). All are resolved paths
    (no symbolic link on the way): Landlock grants what a path resolves to,
    and the check against ``protected`` compares the strings."""

    interpreter: tuple[str, ...]
    snapshot: str
    work: str
    protected: tuple[str, ...] = ()


def confinement_for(fields: Mapping[str, Any], host: HostPaths) -> Confinement:
    """The confinement of an agent whose definition has ``fields``.

    Raises InvalidRequest for a field that is wrong, a snapshot inside the
    work dir (the handler could rewrite its own code), or a granted path that
    contains a protected one."""
    check_path(host.snapshot, "snapshot dir")
    check_path(host.work, "work dir")
    if _beneath(host.snapshot, host.work):
        raise InvalidRequest(f"the source snapshot {host.snapshot} is inside the work dir "
                             f"{host.work}: the handler could rewrite its own code")
    grants = _grants(fields.get("grants", ()))
    net = "net" in grants
    granted_read = sorted(g.partition(":")[2] for g in grants if g.startswith("read:"))
    granted_write = sorted(g.partition(":")[2] for g in grants if g.startswith("write:"))
    for path in (*granted_read, *granted_write):
        check_path(path, "granted path")
        if _beneath(host.snapshot, path) or _beneath(path, host.snapshot):
            raise InvalidRequest(f"granting {path} would let the handler reach its own "
                                 "code snapshot; grant a path beside it")
        inside = [p for p in host.protected if p != "/" and _beneath(path, p)]
        if inside:
            raise InvalidRequest(f"granting {path} would expose {inside[0]}, "
                                 "which confined code may never reach")
    read = _unique([*host.interpreter, host.snapshot, *SYSTEM_READ_PATHS, PROC_SELF,
                    *(NET_READ_PATHS if net else ()), *granted_read])
    write = _unique([host.work, *DEVICE_WRITE_PATHS, *granted_write])
    limits = _limits(fields.get("limits", {}))
    conf = Confinement(
        read_paths=read, write_paths=write, env=_env(fields.get("env", {})),
        cwd=_cwd(fields.get("cwd"), host), net=net, mode=_mode(fields.get("confinement")),
        memory_bytes=limits.get("memory_mb", DEFAULT_MEMORY_BYTES // MIB) * MIB,
        cpu_seconds=limits.get("cpu_seconds", 0),
        open_files=limits.get("open_files", DEFAULT_OPEN_FILES),
        processes=limits.get("processes", 0)).validated()
    check_protected(conf.read_paths + conf.write_paths, host.protected)
    return conf


def check_protected(granted: Iterable[str], protected: Iterable[str]) -> None:
    """InvalidRequest if a granted path is, or contains, a protected one."""
    for path in protected:
        check_path(path, "protected path", allow_root=True)
        for grant in granted:
            if _beneath(path, grant):
                raise InvalidRequest(f"granting {grant} would expose {path}, "
                                     "which confined code may never reach")


def check_path(path: object, what: str, *, allow_root: bool = False) -> str:
    """``path`` if it is an absolute, normalised path, else InvalidRequest."""
    if not isinstance(path, str) or not path:
        raise InvalidRequest(f"{what} must be a path, not {path!r}")
    if "\0" in path:
        raise InvalidRequest(f"{what} {path!r} contains a NUL byte")
    if not path.startswith("/"):
        raise InvalidRequest(f"{what} {path!r} must be absolute")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise InvalidRequest(f"{what} {path!r} is not normalised "
                             f"(use {posixpath.normpath(path)!r})")
    if path == "/" and not allow_root:
        raise InvalidRequest(f"{what} may not be / (that would grant everything)")
    return path


def check_env(env: Iterable[tuple[str, str]]) -> None:
    """InvalidRequest for a name or value the child's environment may not hold."""
    for name, value in env:
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise InvalidRequest(f"environment name {name!r} is invalid "
                                 "(empty, or contains '=' or NUL)")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidRequest(f"environment value of {name} must be a string without NUL")
        if name.startswith("PYTHON"):
            raise InvalidRequest(f"environment variable {name} would be ignored: the "
                                 "handler's interpreter runs isolated (-I)")
        if name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES:
            raise InvalidRequest(f"environment variable {name} is reserved: naosd's, "
                                 "Thespian's and the loader's settings are never passed on")


def to_dict(conf: Confinement) -> dict[str, Any]:
    """The confinement as the child's bootstrap reads it from its argv.

    The environment is left out: the child already has it, and argv is
    readable by every local user (``/proc/PID/cmdline``)."""
    return {"read": list(conf.read_paths), "write": list(conf.write_paths), "cwd": conf.cwd,
            "net": conf.net, "memory_bytes": conf.memory_bytes,
            "cpu_seconds": conf.cpu_seconds, "open_files": conf.open_files,
            "processes": conf.processes, "mode": conf.mode}


def from_dict(body: Any) -> Confinement:
    """Inverse of ``to_dict`` (with an empty ``env``); InvalidRequest if malformed."""
    try:
        conf = Confinement(
            read_paths=tuple(body["read"]), write_paths=tuple(body["write"]), env=(),
            cwd=body["cwd"], net=body["net"], memory_bytes=body["memory_bytes"],
            cpu_seconds=body["cpu_seconds"], open_files=body["open_files"],
            processes=body["processes"], mode=body["mode"])
    except (TypeError, KeyError) as exc:
        raise InvalidRequest(f"malformed confinement: {exc!r}") from exc
    return conf.validated()


def _check_int(value: object, name: str, lo: int, hi: int, *, zero: bool = True) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an integer, not {value!r}")
    if (value == 0 and zero) or lo <= value <= hi:
        return
    none = "0 (no limit) or " if zero else ""
    raise InvalidRequest(f"{name} must be {none}between {lo} and {hi}, not {value}")


def _grants(value: object) -> set[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(g, str) for g in value):
        raise InvalidRequest(f"grants must be a list of names, not {value!r}")
    unknown = sorted(g for g in set(value) - set(GRANTS)
                     if not g.startswith(PATH_GRANTS))
    if unknown:
        raise InvalidRequest(f"unknown grant(s) {unknown}; a Python agent can be granted: "
                             f"{', '.join(GRANTS)}")
    return set(value)


def _limits(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"limits must be a table, not {value!r}")
    unknown = sorted(set(value) - set(LIMIT_KEYS))
    if unknown:
        raise InvalidRequest(f"unknown limit(s) {unknown}; known: {', '.join(LIMIT_KEYS)}")
    for key, number in value.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise InvalidRequest(f"limits.{key} must be a whole number >= 0, not {number!r}")
    return dict(value)


def _env(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"env must be a table of strings, not {value!r}")
    pairs = tuple(sorted(value.items()))
    check_env(pairs)
    return pairs


def _cwd(value: object, host: HostPaths) -> str:
    if value is None:
        return host.work
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"cwd must be a path, not {value!r}")
    path = posixpath.normpath(posixpath.join(host.work, value))
    if not (_beneath(path, host.work) or _beneath(path, host.snapshot)):
        raise InvalidRequest(f"cwd {value!r} must be inside the work dir or the snapshot")
    return path


def _mode(value: object) -> str:
    mode = "full" if value is None else value
    if mode not in MODES:
        raise InvalidRequest(f"confinement must be one of {', '.join(MODES)}, not {value!r}")
    return str(mode)


def _beneath(path: str, top: str) -> bool:
    """True if ``path`` is ``top`` or inside it (both normalised, absolute)."""
    return path == top or top == "/" or path.startswith(top + "/")


def _beneath_any(path: str, tops: Iterable[str]) -> bool:
    return any(_beneath(path, top) for top in tops)


def _unique(paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(paths))
