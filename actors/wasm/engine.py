"""The WASM execution engine: the only module in naos that imports wasmtime.

Guests are WASI preview1 *command* modules: ``_start`` runs once with the input on
stdin; stdout, stderr and the ``proc_exit`` code are the result. A guest gets no
env, no args, no preopened directories and no sockets; the ``naos`` host module
(``log``, ``kv_get``, ``kv_set`` and the agent-API channel functions, listed in
``actors.domain.wasm_abi``) is linked only for the functions a run grants.
The guest ABI is described in ``docs/wasm-abi.md``.

Over 600 lines: the host functions read and write guest memory through the
wasmtime caller and must stay beside the engine that links them.

Every run gets a fresh Store (fuel, an epoch deadline, memory/table limits) that is
closed in ``finally``. Compiled modules are cached by the sha256 of their bytes, in
a bounded LRU and, with a ``cache_dir``, on disk (``Module.serialize``) behind an
HMAC whose key never leaves the 0700 cache dir: ``Module.deserialize`` runs native
code, so only files this engine wrote are loaded.

Threads: several threads may run at once (one Store per run). Host functions never
raise into wasmtime, because wasmtime-py keeps a raised exception in one
module-level global that another thread's call could pick up.

Two WASI details are ours: ``poll_oneoff`` is replaced (wasmtime's sleeps where the
epoch deadline cannot interrupt it), and stdin is set from bytes through wasmtime's
C API (wasmtime-py has no setter for it). Output callbacks are drained at close()
and at exit, see ``_PENDING_SINKS``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import hashlib
import hmac
import importlib.metadata
import json
import logging
import math
import os
import platform
import secrets
import stat
import struct
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import wasmtime
from wasmtime import _ffi as wasmtime_ffi

from actors.domain.wasm_abi import (
    CHANNEL_FUNCTIONS,
    HOST_FUNCTIONS,
    NAOS_FAULT,
    NAOS_HOST_ERROR,
    NAOS_INVALID,
    NAOS_NO_FUEL,
    NAOS_NOT_FOUND,
    NAOS_OK,
    NAOS_TOO_LARGE,
    REPLY_FUNCTION,
    WASM_GRANTS,
    linked,
    needs_grant,
)
from actors.wasm.limits import WASM_PAGE, Limits, price_micro_usd
from actors.wasm.shape import check_shape
from naosd.errors import InvalidRequest, Unavailable
from naosd.errors.wasm import (
    WasmCacheUnsafe,
    WasmCompileTimeout,
    WasmExit,
    WasmImportDenied,
    WasmInputTooLarge,
    WasmInvalidModule,
    WasmMemoryLimit,
    WasmModuleTooLarge,
    WasmOutOfFuel,
    WasmOutputTooLarge,
    WasmRunError,
    WasmTimeout,
    WasmTrap,
)

log = logging.getLogger(__name__)

WASM_MAGIC = b"\0asm\x01\0\0\0"
WASI_MODULE = "wasi_snapshot_preview1"
HOST_MODULE = "naos"

# Every function of WASI preview1. With nothing preopened, the file and socket
# functions can only fail with an errno (EBADF/ENOTCAPABLE).
WASI_FUNCTIONS = frozenset({
    "args_get", "args_sizes_get", "environ_get", "environ_sizes_get", "clock_res_get",
    "clock_time_get", "fd_advise", "fd_allocate", "fd_close", "fd_datasync",
    "fd_fdstat_get", "fd_fdstat_set_flags", "fd_fdstat_set_rights", "fd_filestat_get",
    "fd_filestat_set_size", "fd_filestat_set_times", "fd_pread", "fd_prestat_get",
    "fd_prestat_dir_name", "fd_pwrite", "fd_read", "fd_readdir", "fd_renumber", "fd_seek",
    "fd_sync", "fd_tell", "fd_write", "path_create_directory", "path_filestat_get",
    "path_filestat_set_times", "path_link", "path_open", "path_readlink",
    "path_remove_directory", "path_rename", "path_symlink", "path_unlink_file",
    "poll_oneoff", "proc_exit", "proc_raise", "sched_yield", "random_get", "sock_accept",
    "sock_recv", "sock_send", "sock_shutdown",
})

GROWTH_RESERVATION = 32 * 1024 * 1024  # reserve_address_space=False, see WasmEngine
LOG_LEVELS = range(4)  # 0 debug, 1 info, 2 warning, 3 error
DEFAULT_LIMITS = Limits()

class HostServices(Protocol):
    """What the naos host functions reach: one agent's KV store, its log and
    (``call``) its agent API over the channel."""

    def kv_get(self, key: bytes) -> bytes | None: ...

    def kv_set(self, key: bytes, value: bytes) -> None: ...

    def log(self, level: int, text: str) -> None: ...

    def call(self, name: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One channel function (``llm_chat``, ``agent_ask``, ...): its reply
        object, ``{"ok": value}`` or ``{"error": {"code", "message"}}``;
        waits at most ``timeout_s``."""
        ...


@dataclass(frozen=True, slots=True)
class ExternInfo:
    """One import or export: ``kind`` is func/memory/table/global; ``signature`` is
    ``"(i32,i32)->(i32)"`` for functions and "" otherwise."""

    module: str
    name: str
    kind: str
    signature: str = ""

    def __str__(self) -> str:
        return f"{self.module}.{self.name}" if self.module else self.name


@dataclass(frozen=True, slots=True, eq=False)
class CompiledModule:
    """A compiled module, owned by the WasmEngine that returned it.

    ``origin`` says where this handle came from: "compiled", "memory" or "disk".
    """

    sha256: str
    size: int
    imports: tuple[ExternInfo, ...]
    exports: tuple[ExternInfo, ...]
    origin: str
    _module: Any = field(repr=False)
    _engine_token: object = field(repr=False)

    @property
    def has_start(self) -> bool:
        """Whether it exports ``_start: () -> ()``, i.e. is a WASI command."""
        return any(e.name == "_start" and e.signature == "()->()" for e in self.exports)


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What ``WasmEngine.validate`` found. ``verdict`` is one of "ok", "too_large",
    "invalid", "denied" (imports something not granted) or "not_a_command" (no
    ``_start``); ``problems`` explains any verdict but "ok"."""

    sha256: str
    size: int
    imports: tuple[ExternInfo, ...]
    exports: tuple[ExternInfo, ...]
    has_start: bool
    denied_imports: tuple[str, ...]
    verdict: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of one run that was not stopped by a limit.

    ``fuel_used`` is the fuel charged (the whole budget after a trap, because fuel is
    under-reported after one); ``cost_micro_usd`` is its price. ``memory_peak_bytes``
    is the size of the exported memory at the end (memories never shrink).
    ``cached`` is False only when this run had to compile the module (True when it
    came from the memory or disk cache, or was passed in as a CompiledModule).
    ``host_errors`` lists host-service failures the guest saw as NAOS_HOST_ERROR.
    """

    exit_code: int
    stdout: bytes
    stderr: bytes
    fuel_used: int
    cost_micro_usd: int
    memory_peak_bytes: int
    wall_ms: float
    cached: bool
    host_errors: tuple[str, ...] = ()

    def raise_for_exit(self) -> RunResult:
        """Returns self; raises WasmExit (carrying self) when exit_code is not 0."""
        if self.exit_code != 0:
            raise WasmExit(f"guest exited with code {self.exit_code}", self)
        return self


@dataclass(frozen=True, slots=True)
class CacheStats:
    compiled: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    disk_rejected: int = 0
    abandoned: int = 0  # compiles still running past their deadline


# --------------------------------------------------------------------------- imports


def _valtypes(types: Iterable[Any]) -> str:
    return ",".join(str(t) for t in types)


def _extern_info(module: str, name: str, ty: Any) -> ExternInfo:
    if isinstance(ty, wasmtime.FuncType):
        sig = f"({_valtypes(ty.params)})->({_valtypes(ty.results)})"
        return ExternInfo(module, name, "func", sig)
    kinds = {wasmtime.MemoryType: "memory", wasmtime.TableType: "table",
             wasmtime.GlobalType: "global"}
    return ExternInfo(module, name, kinds.get(type(ty), "other"))


def _host_signature(name: str) -> str:
    n_params, n_results = HOST_FUNCTIONS[name]
    return f"({_valtypes(['i32'] * n_params)})->({_valtypes(['i32'] * n_results)})"


def _import_problem(imp: ExternInfo, grants: frozenset[str]) -> str | None:
    """Why ``imp`` may not be linked under ``grants``, or None when it may."""
    if imp.kind != "func":
        return f"{imp}: only functions may be imported, not a {imp.kind}"
    if imp.module == WASI_MODULE:
        return None if imp.name in WASI_FUNCTIONS else f"{imp}: not a WASI preview1 function"
    if imp.module != HOST_MODULE or imp.name not in HOST_FUNCTIONS:
        return f"{imp}: unknown import"
    if needs_grant(imp.name, grants):
        if imp.name == REPLY_FUNCTION:
            return (f"{imp}: comes with any granted channel function "
                    f"({', '.join(CHANNEL_FUNCTIONS)})")
        return f"{imp}: host function not granted"
    if imp.signature != _host_signature(imp.name):
        return f"{imp}: signature {imp.signature}, expected {_host_signature(imp.name)}"
    return None


def denied_imports(imports: Iterable[ExternInfo], grants: frozenset[str]) -> tuple[str, ...]:
    """One message per import a run under ``grants`` refuses (empty: all allowed)."""
    return tuple(p for p in (_import_problem(i, grants) for i in imports) if p)


def _check_grants(grants: Iterable[str]) -> frozenset[str]:
    """Raises InvalidRequest for a grant that names no naos host function."""
    granted = frozenset(grants)
    unknown = sorted(granted - set(WASM_GRANTS))
    if unknown:
        raise InvalidRequest(f"unknown grant(s) {unknown}; known: {sorted(WASM_GRANTS)}")
    return granted


# ------------------------------------------------------------------------ disk cache


class _DiskCache:
    """Serialized modules in a private dir, each file ``MAGIC || hmac || payload``.

    The HMAC key is a 0600 file in the dir, created once; the MAC covers the engine
    fingerprint, the module's sha256 and the payload, so a file is only deserialized
    when this engine configuration wrote it for exactly that module.
    """

    MAGIC = b"NAOSCW1\n"
    KEY_NAME = "hmac.key"

    def __init__(self, path: Path, fingerprint: bytes) -> None:
        """Raises WasmCacheUnsafe when the dir or key is not ours or too open."""
        self.path = path
        self._fingerprint = fingerprint
        self.rejected = 0
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(path, want_dir=True)
        self._key = self._load_or_create_key()

    def _load_or_create_key(self) -> bytes:
        key_path = self.path / self.KEY_NAME
        if not key_path.exists():
            tmp = self._write_temp(secrets.token_bytes(32))
            try:
                os.link(tmp, key_path)  # atomic; loses quietly to a concurrent creator
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            _check_private(key_path, want_dir=False, st=os.fstat(f.fileno()))
            key = f.read()
        if len(key) != 32:
            raise WasmCacheUnsafe(f"{key_path} is not a 32-byte key")
        return key

    def _mac(self, digest: str, payload: bytes) -> bytes:
        mac = hmac.new(self._key, self._fingerprint + b"\0" + digest.encode() + b"\0",
                       hashlib.sha256)
        mac.update(payload)
        return mac.digest()

    def _file(self, digest: str) -> Path:
        return self.path / f"{digest}.cwasm"

    def load(self, digest: str) -> bytes | None:
        """The payload stored for ``digest``; None when absent or not ours (removed)."""
        try:
            fd = os.open(self._file(digest), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            blob = f.read()
        head, mac, payload = blob[:8], blob[8:40], blob[40:]
        if head == self.MAGIC and hmac.compare_digest(mac, self._mac(digest, payload)):
            return payload
        self.rejected += 1
        self.discard(digest, "failed its HMAC check")
        return None

    def store(self, digest: str, payload: bytes) -> None:
        """Writes atomically; a failure is logged, never raised (the cache is optional)."""
        try:
            tmp = self._write_temp(self.MAGIC + self._mac(digest, payload) + payload)
            os.replace(tmp, self._file(digest))
        except OSError as exc:
            log.warning("wasm cache: cannot write %s: %s", digest, exc)

    def discard(self, digest: str, why: str) -> None:
        log.warning("wasm cache: discarding %s: %s", self._file(digest), why)
        with contextlib.suppress(OSError):
            os.unlink(self._file(digest))

    def _write_temp(self, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp


def _check_private(path: Path, *, want_dir: bool, st: os.stat_result | None = None) -> None:
    """Raises WasmCacheUnsafe unless ``path`` is ours and closed to group and others."""
    st = st or os.stat(path)
    if want_dir != stat.S_ISDIR(st.st_mode):
        raise WasmCacheUnsafe(f"{path} is not a {'directory' if want_dir else 'file'}")
    if st.st_uid != os.geteuid():
        raise WasmCacheUnsafe(f"{path} is owned by uid {st.st_uid}, not {os.geteuid()}")
    if st.st_mode & 0o077:
        raise WasmCacheUnsafe(f"{path} has mode {stat.S_IMODE(st.st_mode):o}; "
                              f"want {'0700' if want_dir else '0600'}")


# --------------------------------------------------------------------- epoch ticker


class _EpochTicker:
    """Increments the engine epoch every ``tick_s`` while at least one run is active."""

    def __init__(self, engine: Any, tick_s: float) -> None:
        self._engine = engine
        self.tick_s = tick_s
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="naos-wasm-epoch",
                                        daemon=True)
        self._thread.start()

    def enter(self) -> None:
        with self._cond:
            self._active += 1
            self._cond.notify()

    def leave(self) -> None:
        with self._cond:
            self._active -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        next_tick = 0.0
        while True:
            with self._cond:
                if not self._active and not self._closed:
                    self._cond.wait_for(lambda: self._active or self._closed)
                    next_tick = 0.0
                if self._closed:
                    return
            now = time.monotonic()
            # a steady beat: late ticks catch up, so N ticks ~ N * tick_s of wall time
            next_tick = (next_tick or now) + self.tick_s
            if next_tick > now:
                time.sleep(next_tick - now)
            self._engine.increment_epoch()


# ------------------------------------------------------------------- host functions


class _Capture:
    """A stdout/stderr sink with a cap; runs on wasmtime's own threads, never raises."""

    __slots__ = ("cap", "chunks", "overflow", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def write(self, data: bytes) -> int:
        room = self.cap - self.size
        if len(data) <= room:
            self.chunks.append(data)
            self.size += len(data)
            return len(data)
        if room > 0:
            self.chunks.append(data[:room])
            self.size = self.cap
        self.overflow = True
        return -errno.EFBIG

    def value(self) -> bytes:
        return b"".join(self.chunks)


# wasmtime drops a closed Store's output callbacks a little later (~0.2 ms) on its own
# tokio threads. One still pending when the interpreter finalizes calls into Python too
# late, and the thread panics ("panic in a function that cannot unwind"): drain them in
# close() and at exit. Each callback is a fresh bound method that only wasmtime holds,
# so it leaves this set exactly when wasmtime drops it.
_PENDING_SINKS: weakref.WeakSet[Callable[[bytes], int]] = weakref.WeakSet()


def _tracked(sink: Callable[[bytes], int]) -> Callable[[bytes], int]:
    _PENDING_SINKS.add(sink)
    return sink


def _drain_output_callbacks(timeout_s: float = 1.0) -> None:
    """Waits, without the GIL, until wasmtime has dropped every output callback."""
    deadline = time.monotonic() + timeout_s
    while len(_PENDING_SINKS) and time.monotonic() < deadline:
        time.sleep(0.0005)


atexit.register(_drain_output_callbacks)


@dataclass(slots=True)
class _RunState:
    limits: Limits
    grants: frozenset[str]
    host: HostServices | None
    host_errors: list[str] = field(default_factory=list)
    deadline: float = 0.0  # time.monotonic() at which the run times out
    clock_origin_ns: int = 0  # time.monotonic_ns() when the WASI context was made
    slept_past_deadline: bool = False  # poll_oneoff was cut short by the deadline
    reply: bytes | None = None  # the last channel call's reply, until the next call


_CURRENT = threading.local()  # .state: the _RunState of the run on this thread


def _charge(caller: Any, fuel: int) -> bool:
    """Takes ``fuel`` from the caller's store; on too little, empties it (the guest then
    traps out of fuel as soon as it runs again) and returns False."""
    ctx = caller._context()
    left = ctypes.c_uint64(0)
    err = wasmtime_ffi.wasmtime_context_get_fuel(ctx, ctypes.byref(left))
    if err:
        wasmtime.WasmtimeError._from_ptr(err)  # frees it
        return True  # fuel is not metered on this store
    remaining = left.value - fuel
    wasmtime_ffi.wasmtime_context_set_fuel(ctx, max(remaining, 0))
    return remaining >= 0


def _guest_memory(caller: Any) -> Any:
    mem = caller.get("memory")
    return mem if isinstance(mem, wasmtime.Memory) else None


def _read(caller: Any, ptr: int, length: int) -> bytes | None:
    mem = _guest_memory(caller)
    if mem is None or ptr + length > mem.data_len(caller):
        return None
    return bytes(mem.read(caller, ptr, ptr + length)) if length else b""


def _write(caller: Any, ptr: int, data: bytes) -> bool:
    mem = _guest_memory(caller)
    if mem is None or ptr + len(data) > mem.data_len(caller):
        return False
    if data:
        mem.write(caller, data, ptr)
    return True


def _take(caller: Any, ptr: int, length: int, cap: int) -> bytes | int:
    """``length`` bytes at ``ptr``, paid one fuel a byte; or the code refusing
    them (over ``cap``, no fuel, outside the memory), checked in that order."""
    if length > cap:
        return NAOS_TOO_LARGE
    if not _charge(caller, length):
        return NAOS_NO_FUEL
    data = _read(caller, ptr, length)
    return NAOS_FAULT if data is None else data


def _host_log(st: _RunState, caller: Any, level: int, ptr: int, length: int) -> int:
    if level not in LOG_LEVELS:
        return NAOS_INVALID
    text = _take(caller, ptr, length, st.limits.log_bytes)
    if isinstance(text, int):
        return text
    assert st.host is not None
    st.host.log(level, text.decode("utf-8", "replace"))
    return NAOS_OK


def _host_kv_get(st: _RunState, caller: Any, kptr: int, klen: int, vptr: int, vcap: int) -> int:
    if klen > st.limits.kv_key_bytes:
        return NAOS_TOO_LARGE
    if not _charge(caller, klen):
        return NAOS_NO_FUEL
    key = _read(caller, kptr, klen)
    if key is None:
        return NAOS_FAULT
    assert st.host is not None
    value = st.host.kv_get(key)
    if value is None:
        return NAOS_NOT_FOUND
    if len(value) > st.limits.kv_value_bytes:
        return NAOS_TOO_LARGE
    if len(value) > vcap:
        return len(value)  # too small a buffer: nothing written, the guest may retry
    if not _charge(caller, len(value)):
        return NAOS_NO_FUEL
    return len(value) if _write(caller, vptr, value) else NAOS_FAULT


def _host_kv_set(st: _RunState, caller: Any, kptr: int, klen: int, vptr: int, vlen: int) -> int:
    if klen > st.limits.kv_key_bytes or vlen > st.limits.kv_value_bytes:
        return NAOS_TOO_LARGE
    if not _charge(caller, klen + vlen):
        return NAOS_NO_FUEL
    key, value = _read(caller, kptr, klen), _read(caller, vptr, vlen)
    if key is None or value is None:
        return NAOS_FAULT
    assert st.host is not None
    st.host.kv_set(key, value)
    return NAOS_OK


def _fits(caller: Any, ptr: int, length: int) -> bool:
    mem = _guest_memory(caller)
    return mem is not None and ptr + length <= mem.data_len(caller)


def _request(st: _RunState, caller: Any, ptr: int, length: int) -> dict[str, Any] | int:
    """The JSON object a channel call was given, or the code refusing it."""
    raw = _take(caller, ptr, length, st.limits.call_bytes)
    if isinstance(raw, int):
        return raw
    try:
        request = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        return NAOS_INVALID
    return request if isinstance(request, dict) else NAOS_INVALID


def _not_json(constant: str) -> Any:
    """Python's json reads NaN and Infinity; JSON has no such values (a NaN
    timeout compares false with everything)."""
    raise ValueError(f"{constant} is not JSON")


def _channel_call(name: str) -> Callable[..., int]:
    """``naos.<name>(in_ptr, in_len, out_ptr, out_cap)``: the request is
    checked and the output buffer bounds-checked before anything is asked of
    the host, so a refused call has no effect; the reply is held for
    ``naos.reply`` whether or not it fits."""
    def impl(st: _RunState, caller: Any, in_ptr: int, in_len: int, out_ptr: int,
             out_cap: int) -> int:
        request = _request(st, caller, in_ptr, in_len)
        if isinstance(request, int):
            return request
        if not _fits(caller, out_ptr, out_cap):
            return NAOS_FAULT
        assert st.host is not None
        left = st.deadline - time.monotonic()
        reply = (st.host.call(name, request, left) if left > 0 else _error(
            "timeout", f"naos.{name}: the run's {st.limits.timeout_ms} ms are over"))
        st.reply = json.dumps(reply, separators=(",", ":")).encode()
        if len(st.reply) > st.limits.reply_bytes:
            st.reply = json.dumps(_error("wasm_reply_too_large", (
                f"naos.{name}: the reply is {len(st.reply)} bytes; the limit is "
                f"{st.limits.reply_bytes} (Limits.reply_bytes)"))).encode()
        return _deliver(st, caller, out_ptr, out_cap)

    return impl


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _deliver(st: _RunState, caller: Any, out_ptr: int, out_cap: int) -> int:
    """Writes the held reply if it fits; returns its length either way."""
    assert st.reply is not None
    size = len(st.reply)
    if size > out_cap:
        return size  # nothing written: naos.reply(ptr, cap) copies it
    if not _charge(caller, size):
        return NAOS_NO_FUEL
    return size if _write(caller, out_ptr, st.reply) else NAOS_FAULT


def _host_reply(st: _RunState, caller: Any, out_ptr: int, out_cap: int) -> int:
    if st.reply is None:
        return NAOS_NOT_FOUND
    return _deliver(st, caller, out_ptr, out_cap)


# WASI preview1 poll_oneoff, replaced because wasmtime's sleeps in the host where the
# epoch deadline cannot stop it: ours sleeps at most until the run's deadline.
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # userdata, tag, clock id|fd, timeout, -, flags
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, errno, type, nbytes, flags
_TAG_CLOCK, _TAG_FD_READ, _TAG_FD_WRITE = 0, 1, 2
_ERRNO_BADF, _ERRNO_FAULT, _ERRNO_INVAL = 8, 21, 28
_MAX_SUBSCRIPTIONS = 1024


def _clock_wait_ns(st: _RunState, clock_id: int, timeout: int, flags: int) -> int | None:
    """Nanoseconds until a clock subscription fires; None for an unknown clock."""
    if clock_id not in (0, 1):
        return None
    if not flags & 1:  # relative timeout
        return timeout
    now = time.time_ns() if clock_id == 0 else time.monotonic_ns() - st.clock_origin_ns
    return max(0, timeout - now)


def _poll_events(st: _RunState, subs: list[tuple[int, ...]]) -> list[bytes]:
    """fd subscriptions (stdin, stdout, stderr) are always ready; otherwise sleep for
    the nearest clock, but not past the deadline."""
    ready = [_EVENT.pack(u, 0 if fd in (0, 1, 2) else _ERRNO_BADF, tag, 0, 0)
             for u, tag, fd, _, _, _ in subs if tag in (_TAG_FD_READ, _TAG_FD_WRITE)]
    if ready:
        return ready
    waits = [(u, _clock_wait_ns(st, cid, t, f)) for u, _, cid, t, _, f in subs]
    bad = [_EVENT.pack(u, _ERRNO_INVAL, _TAG_CLOCK, 0, 0) for u, w in waits if w is None]
    if bad:
        return bad
    wait_ns = min(w for _, w in waits if w is not None)
    left = st.deadline - time.monotonic()
    if wait_ns / 1e9 > left:
        st.slept_past_deadline = True  # the guest may never run wasm again to trap
    time.sleep(max(0.0, min(wait_ns / 1e9, left)))
    return [_EVENT.pack(u, 0, _TAG_CLOCK, 0, 0) for u, w in waits if w == wait_ns]


def _wasi_poll_oneoff(st: _RunState, caller: Any, in_ptr: int, out_ptr: int, nsubs: int,
                      nevents_ptr: int) -> int:
    if not 0 < nsubs <= _MAX_SUBSCRIPTIONS:
        return _ERRNO_INVAL
    raw = _read(caller, in_ptr, nsubs * _SUBSCRIPTION.size)
    if raw is None:
        return _ERRNO_FAULT
    subs = [_SUBSCRIPTION.unpack_from(raw, i * _SUBSCRIPTION.size) for i in range(nsubs)]
    if any(tag not in (_TAG_CLOCK, _TAG_FD_READ, _TAG_FD_WRITE) for _, tag, *_ in subs):
        return _ERRNO_INVAL
    events = _poll_events(st, subs)
    if _write(caller, out_ptr, b"".join(events)) and _write(
            caller, nevents_ptr, struct.pack("<I", len(events))):
        return 0
    return _ERRNO_FAULT


_HOST_IMPLS: dict[str, Callable[..., int]] = {
    "log": _host_log, "kv_get": _host_kv_get, "kv_set": _host_kv_set,
    REPLY_FUNCTION: _host_reply, **{name: _channel_call(name) for name in CHANNEL_FUNCTIONS},
}


def _host_entry(module: str, name: str, impl: Callable[..., int], error: int
                ) -> Callable[..., int]:
    """The callable linked as ``module.name``: it charges the call, unsigns the i32
    arguments, routes to this thread's run and never raises (see module docstring):
    a failure returns ``error``."""
    needs_host = module == HOST_MODULE

    def entry(caller: Any, *args: int) -> int:
        st: _RunState | None = getattr(_CURRENT, "state", None)
        if st is None or (needs_host and st.host is None):
            return error
        try:
            if not _charge(caller, st.limits.host_call_fuel):
                return NAOS_NO_FUEL if needs_host else error
            return impl(st, caller, *(a & 0xFFFFFFFF for a in args))
        except Exception as exc:  # noqa: BLE001 - raising would cross threads, see above
            st.host_errors.append(f"{module}.{name}: {type(exc).__name__}: {exc}")
            return error

    return entry


# --------------------------------------------------------------------------- engine


def _set_stdin(wasi: Any, data: bytes) -> None:
    vec = wasmtime_ffi.wasm_byte_vec_t()
    if data:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        wasmtime_ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buf)
    else:
        wasmtime_ffi.wasm_byte_vec_new_empty(ctypes.byref(vec))
    wasmtime_ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # takes vec


def _cause(text: str) -> str:
    """The last non-blank line of a wasmtime message: its root cause."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text


@dataclass(slots=True)
class _Outcome:
    """What happened inside the Store, before it is judged against the limits."""

    exit_code: int = 0
    trapped: bool = False
    trap_code: str | None = None  # TrapCode name, lower case; None for a host error
    trap_message: str = ""
    link_error: str | None = None
    compiled_here: bool = False
    fuel_left: int = 0
    memory_bytes: int = 0
    wall_ms: float = 0.0


class WasmEngine:
    """Compiles, caches and runs WASI command modules under Limits.

    ``cache_dir`` (None: memory cache only) is created 0700; WasmCacheUnsafe is
    raised when it or its key is not owned by this user or is open to others.
    ``epoch_tick_ms`` is the timeout granularity: a run times out between
    ``timeout_ms`` and ``timeout_ms + epoch_tick_ms`` (plus scheduling jitter).
    ``reserve_address_space=False`` is for a process under an address-space
    limit (a confined agent): no GiB reservation per memory, bounds checked in
    code instead of by guard pages (same semantics; as fast, measured: see
    docs/wasm-abi.md).
    """

    def __init__(self, cache_dir: Path | None = None, *, memory_cache_size: int = 64,
                 epoch_tick_ms: float = 2.0, max_wasm_stack: int = 512 * 1024,
                 reserve_address_space: bool = True) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        config.wasm_threads = False
        config.max_wasm_stack = max_wasm_stack
        if not reserve_address_space:
            # wasmtime reserves GiBs of address space per linear memory (bounds
            # checks by guard pages); under an RLIMIT_AS (a confined agent's
            # memory_mb, 1 GiB by default) that mmap fails at instantiation.
            # Without it bounds are checked in code, and a memory keeps 32 MiB of
            # room to grow in place (with none, each memory.grow moved and copied
            # it: a C guest parsing 20k records ran 10x slower, measured).
            config.memory_reservation = 0
            config.memory_reservation_for_growth = GROWTH_RESERVATION
            config.memory_guard_size = 0
        self._engine = wasmtime.Engine(config)
        self._fingerprint = _fingerprint(max_wasm_stack, reserve_address_space)
        self._disk = _DiskCache(Path(cache_dir), self._fingerprint) if cache_dir else None
        self._memory_cache_size = memory_cache_size
        self._modules: OrderedDict[str, CompiledModule] = OrderedDict()
        self._linkers: dict[frozenset[str], Any] = {}
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._tick_ms = epoch_tick_ms
        self._ticker = _EpochTicker(self._engine, epoch_tick_ms / 1000)
        self._closed = False
        self._token = object()  # identifies the CompiledModules this engine made

    @property
    def stats(self) -> CacheStats:
        """Counts of compiles and cache hits since this engine was made."""
        rejected = self._disk.rejected if self._disk else 0
        return replace(self._stats, disk_rejected=rejected)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            s = self._stats
            self._stats = replace(s, **{k: getattr(s, k) + v for k, v in deltas.items()})

    # ---------------------------------------------------------------- compile

    def compile(self, module_bytes: bytes | bytearray | memoryview, *,
                limits: Limits | None = None) -> CompiledModule:
        """The compiled module for these bytes, from the memory cache, the disk cache or
        a fresh compile. Raises, before compiling, WasmModuleTooLarge over
        ``limits.module_bytes``, WasmModuleTooComplex over ``limits.functions`` and
        WasmInvalidModule for malformed section headers; WasmInvalidModule for
        anything wasmtime does not accept; WasmCompileTimeout when the compile takes
        longer than ``limits.compile_timeout_ms`` (it is abandoned on a thread that
        keeps running: the caller's process should be replaced)."""
        self._check_open()
        limits = limits or DEFAULT_LIMITS
        data = bytes(module_bytes)
        if len(data) > limits.module_bytes:
            raise WasmModuleTooLarge(f"module is {len(data)} bytes; the limit is "
                                     f"{limits.module_bytes}")
        if not data.startswith(WASM_MAGIC):
            raise WasmInvalidModule("not a WebAssembly core module (bad magic or version)")
        check_shape(data, limits.functions)
        digest = hashlib.sha256(data).hexdigest()
        hit = self._memory_get(digest)
        if hit is not None:
            return hit
        module, origin = self._load_or_compile(digest, data, limits.compile_timeout_ms)
        compiled = _describe(module, digest, len(data), origin, self._token)
        self._memory_put(compiled)
        return compiled

    def _memory_get(self, digest: str) -> CompiledModule | None:
        with self._lock:
            hit = self._modules.get(digest)
            if hit is not None:
                self._modules.move_to_end(digest)
        if hit is None:
            return None
        self._count(memory_hits=1)
        return replace(hit, origin="memory")

    def _memory_put(self, compiled: CompiledModule) -> None:
        with self._lock:
            self._modules[compiled.sha256] = compiled
            self._modules.move_to_end(compiled.sha256)
            while len(self._modules) > self._memory_cache_size:
                self._modules.popitem(last=False)

    def _load_or_compile(self, digest: str, data: bytes, timeout_ms: int) -> tuple[Any, str]:
        module = self._disk_load(digest)
        if module is not None:
            self._count(disk_hits=1)
            return module, "disk"
        module = self._compile_within(data, timeout_ms)
        self._count(compiled=1)
        if self._disk is not None:
            self._disk.store(digest, bytes(module.serialize()))
        return module, "compiled"

    def _compile_within(self, data: bytes, timeout_ms: int) -> Any:
        """``wasmtime.Module(data)`` on a thread, waited for ``timeout_ms``.

        wasmtime cannot cancel a compile; past the deadline the thread is left
        to finish on its own (a daemon thread: the process may exit) and
        WasmCompileTimeout is raised."""
        done: list[Any] = []

        def work() -> None:
            try:
                done.append(wasmtime.Module(self._engine, data))
            except Exception as exc:  # noqa: BLE001 - handed to the waiting thread
                done.append(exc)

        worker = threading.Thread(target=work, name="naos-wasm-compile", daemon=True)
        worker.start()
        worker.join(timeout_ms / 1000)
        if not done:
            self._count(abandoned=1)
            raise WasmCompileTimeout(f"compiling the {len(data)}-byte module took longer "
                                     f"than {timeout_ms} ms; abandoned")
        if isinstance(done[0], wasmtime.WasmtimeError):
            raise WasmInvalidModule(f"invalid module: {_cause(str(done[0]))}") from done[0]
        if isinstance(done[0], Exception):
            raise done[0]
        return done[0]

    def _disk_load(self, digest: str) -> Any:
        if self._disk is None:
            return None
        payload = self._disk.load(digest)
        if payload is None:
            return None
        try:
            return wasmtime.Module.deserialize(self._engine, payload)
        except wasmtime.WasmtimeError as exc:  # ours, but from another wasmtime build
            self._disk.discard(digest, _cause(str(exc)))
            return None

    # --------------------------------------------------------------- validate

    def validate(self, module_bytes: bytes | bytearray | memoryview,
                 limits: Limits | None = None, *,
                 grants: Iterable[str] = frozenset()) -> ValidationReport:
        """Reports whether these bytes would run under ``limits`` and ``grants``.

        Never raises for a bad module (that is the report's verdict); raises
        InvalidRequest for an unknown grant. A valid module is compiled and cached.
        """
        granted = _check_grants(grants)
        data = bytes(module_bytes)
        digest = hashlib.sha256(data).hexdigest()
        empty: tuple[ExternInfo, ...] = ()
        try:
            cm = self.compile(data, limits=limits)
        except WasmInvalidModule as exc:
            verdict = "too_large" if isinstance(exc, WasmModuleTooLarge) else "invalid"
            return ValidationReport(digest, len(data), empty, empty, False, (), verdict,
                                    (str(exc),))
        denied = denied_imports(cm.imports, granted)
        problems = denied if denied else () if cm.has_start else ("no _start export",)
        verdict = "denied" if denied else "ok" if cm.has_start else "not_a_command"
        return ValidationReport(digest, cm.size, cm.imports, cm.exports, cm.has_start,
                                denied, verdict, problems)

    # -------------------------------------------------------------------- run

    def run(self, module: CompiledModule | bytes | bytearray | memoryview, stdin: bytes = b"",
            *, limits: Limits | None = None, grants: Iterable[str] = frozenset(),
            host: HostServices | None = None) -> RunResult:
        """Runs the module's ``_start`` once in a fresh Store.

        Returns a RunResult for exit code 0 and for a non-zero ``proc_exit`` alike
        (``raise_for_exit()`` turns the latter into WasmExit). Raises, before the guest
        starts: WasmInputTooLarge, WasmModuleTooLarge, WasmInvalidModule (also when
        there is no ``_start``), WasmImportDenied (naming the import), InvalidRequest
        (unknown grant, or grants without ``host``). Raises, after it started, a
        WasmRunError carrying the partial RunResult: WasmOutputTooLarge,
        WasmOutOfFuel, WasmTimeout, WasmMemoryLimit, WasmTrap. Raises Unavailable once
        the engine is closed.
        """
        self._check_open()
        limits = limits or DEFAULT_LIMITS
        granted = _check_grants(grants)
        if granted and host is None:
            raise InvalidRequest(f"grants {sorted(granted)} need host services")
        if len(stdin) > limits.stdin_bytes:
            raise WasmInputTooLarge(f"input is {len(stdin)} bytes; the limit is "
                                    f"{limits.stdin_bytes}")
        compiled = self._prepare(module, limits, granted)
        state = _RunState(limits, granted, host)
        out, err = _Capture(limits.stdout_bytes), _Capture(limits.stderr_bytes)
        outcome = self._execute(compiled, bytes(stdin), state, out, err)
        outcome.compiled_here = compiled.origin == "compiled" and compiled is not module
        return _judge(limits, state, outcome, out, err)

    def _prepare(self, module: CompiledModule | bytes | bytearray | memoryview, limits: Limits,
                 grants: frozenset[str]) -> CompiledModule:
        if isinstance(module, CompiledModule):
            if module._engine_token is not self._token:
                raise InvalidRequest("this CompiledModule belongs to another WasmEngine")
            compiled = module
        else:
            compiled = self.compile(module, limits=limits)
        denied = denied_imports(compiled.imports, grants)
        if denied:
            raise WasmImportDenied("import denied: " + "; ".join(denied))
        if not compiled.has_start:
            raise WasmInvalidModule("not a WASI command: no _start export")
        return compiled

    def _execute(self, compiled: CompiledModule, stdin: bytes, state: _RunState,
                 out: _Capture, err: _Capture) -> _Outcome:
        store = wasmtime.Store(self._engine)
        outcome = _Outcome()
        try:
            self._configure(store, stdin, state, out, err)
            linker = self._linker(state.grants)
            self._ticker.enter()
            _CURRENT.state = state
            started = time.perf_counter()
            state.deadline = time.monotonic() + state.limits.timeout_ms / 1000
            try:
                exports = _call_start(store, linker, compiled._module, outcome)
            finally:
                outcome.wall_ms = (time.perf_counter() - started) * 1000
                _CURRENT.state = None
                self._ticker.leave()
            outcome.fuel_left = store.get_fuel()
            outcome.memory_bytes = _memory_size(store, exports)
        finally:
            store.close()
        return outcome

    def _configure(self, store: Any, stdin: bytes, state: _RunState, out: _Capture,
                   err: _Capture) -> None:
        limits = state.limits
        state.clock_origin_ns = time.monotonic_ns()
        store.set_fuel(limits.fuel)
        # +1: the tick in progress when the deadline is set may be almost over
        store.set_epoch_deadline(math.ceil(limits.timeout_ms / self._tick_ms) + 1)
        store.set_limits(memory_size=limits.memory_bytes, table_elements=limits.table_elements,
                         instances=1, tables=limits.tables, memories=1)
        wasi = wasmtime.WasiConfig()
        _set_stdin(wasi, stdin)
        wasi.stdout_custom = _tracked(out.write)
        wasi.stderr_custom = _tracked(err.write)
        store.set_wasi(wasi)

    def _linker(self, grants: frozenset[str]) -> Any:
        """One Linker per grant set, shared by all runs (host calls find their run
        through a thread-local); a Linker does not hold a Store."""
        with self._lock:
            linker = self._linkers.get(grants)
            if linker is None:
                linker = self._linkers[grants] = self._new_linker(grants)
            return linker

    def _new_linker(self, grants: frozenset[str]) -> Any:
        linker = wasmtime.Linker(self._engine)
        linker.allow_shadowing = True
        linker.define_wasi()
        _define(linker, WASI_MODULE, "poll_oneoff", 4, _wasi_poll_oneoff, _ERRNO_INVAL)
        for name in linked(grants):
            _define(linker, HOST_MODULE, name, HOST_FUNCTIONS[name][0], _HOST_IMPLS[name],
                    NAOS_HOST_ERROR)
        return linker

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the wasm engine is closed")

    def close(self) -> None:
        """Stops the epoch ticker and drops every cached module; idempotent. Call it
        once no run is in progress."""
        if self._closed:
            return
        self._closed = True
        self._ticker.close()
        _drain_output_callbacks()
        with self._lock:
            for compiled in self._modules.values():
                compiled._module.close()
            self._modules.clear()
            self._linkers.clear()

    def __enter__(self) -> WasmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call_start(store: Any, linker: Any, module: Any, outcome: _Outcome) -> Any:
    """Instantiates and runs ``_start``, recording how it ended in ``outcome``.
    Returns the instance's exports (None when instantiation failed)."""
    try:
        instance = linker.instantiate(store, module)
    except (wasmtime.Trap, wasmtime.ExitTrap) as exc:  # a start function ran
        _record_end(outcome, exc)
        return None
    except wasmtime.WasmtimeError as exc:
        outcome.link_error = _cause(str(exc))
        return None
    exports = instance.exports(store)
    try:
        exports["_start"](store)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        _record_end(outcome, exc)
    return exports


def _record_end(outcome: _Outcome, exc: Exception) -> None:
    if isinstance(exc, wasmtime.ExitTrap):
        outcome.exit_code = exc.code
        return
    outcome.trapped = True
    if isinstance(exc, wasmtime.Trap):
        code = exc.trap_code
        outcome.trap_code = code.name.lower() if code is not None else None
        outcome.trap_message = _cause(exc.message)
    else:  # a WASI host function failed, e.g. on a misaligned pointer
        outcome.trap_message = _cause(str(exc))


def _define(linker: Any, module: str, name: str, n_params: int, impl: Callable[..., int],
            error: int) -> None:
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32] * n_params, [i32])
    linker.define_func(module, name, ty, _host_entry(module, name, impl, error),
                       access_caller=True)


def _memory_size(store: Any, exports: Any) -> int:
    if exports is None:
        return 0
    mem = exports.get("memory")
    return int(mem.data_len(store)) if isinstance(mem, wasmtime.Memory) else 0


def _describe(module: Any, digest: str, size: int, origin: str, engine_token: object
              ) -> CompiledModule:
    imports = tuple(_extern_info(i.module, i.name or "", i.type) for i in module.imports)
    exports = tuple(_extern_info("", e.name, e.type) for e in module.exports)
    return CompiledModule(digest, size, imports, exports, origin, module, engine_token)


def _fingerprint(max_wasm_stack: int, reserve_address_space: bool) -> bytes:
    version = importlib.metadata.version("wasmtime")
    reserve = "" if reserve_address_space else "; no reservation"
    return (f"wasmtime-py {version}; {platform.machine()}; fuel; epoch; no-threads; "
            f"stack {max_wasm_stack}{reserve}").encode()


# --------------------------------------------------------------------- judgement


def _judge(limits: Limits, state: _RunState, outcome: _Outcome, out: _Capture,
           err: _Capture) -> RunResult:
    """Turns an outcome into a RunResult, or raises the WasmRunError it deserves."""
    trapped = outcome.trapped
    # Under-reported after a trap (0 after a timeout): charge the whole budget.
    fuel_used = limits.fuel if trapped else limits.fuel - outcome.fuel_left
    result = RunResult(
        exit_code=outcome.exit_code, stdout=out.value(), stderr=err.value(),
        fuel_used=fuel_used,
        cost_micro_usd=price_micro_usd(fuel_used, limits.price_micro_usd_per_mfuel),
        memory_peak_bytes=outcome.memory_bytes, wall_ms=outcome.wall_ms,
        cached=not outcome.compiled_here, host_errors=tuple(state.host_errors))
    if outcome.link_error is not None:
        _raise_link_error(outcome.link_error, limits, result)
    error = _run_error(result, limits, outcome, out, err)
    if error is None and state.slept_past_deadline:
        error = WasmTimeout(f"guest timed out after {limits.timeout_ms} ms (asleep)", result)
    if error is not None:
        raise error
    return result


def _raise_link_error(message: str, limits: Limits, result: RunResult) -> None:
    """Instantiation failed: over a memory or table limit, or a link error."""
    if "exceeds memory limits" in message:
        raise WasmMemoryLimit(f"the module needs more than {limits.memory_bytes} bytes of "
                              f"memory: {message}", result)
    if "limit" in message:  # tables, table elements, instances, memories
        raise WasmMemoryLimit(f"the module exceeds a store limit: {message}", result)
    raise WasmInvalidModule(f"cannot instantiate: {message}")


def _run_error(result: RunResult, limits: Limits, outcome: _Outcome, out: _Capture,
               err: _Capture) -> WasmRunError | None:
    for cap, name in ((out, "stdout"), (err, "stderr")):
        if cap.overflow:
            return WasmOutputTooLarge(f"guest wrote more than {cap.cap} bytes to {name}",
                                      result)
    if outcome.trap_code == "out_of_fuel":
        return WasmOutOfFuel(f"guest ran out of fuel ({limits.fuel})", result)
    if outcome.trap_code == "interrupt":
        return WasmTimeout(f"guest timed out after {limits.timeout_ms} ms", result)
    failed = outcome.trapped or outcome.exit_code != 0
    at_cap = outcome.memory_bytes + WASM_PAGE > limits.memory_bytes
    if failed and (at_cap or "GC heap out of memory" in outcome.trap_message):
        return WasmMemoryLimit(f"guest failed at its memory limit ({limits.memory_bytes} "
                               f"bytes)", result)
    if outcome.trapped:
        return WasmTrap(f"guest trapped: {outcome.trap_message}", result, outcome.trap_code)
    return None


__all__ = [
    "HOST_FUNCTIONS", "HOST_MODULE", "NAOS_FAULT", "NAOS_HOST_ERROR", "NAOS_INVALID",
    "NAOS_NOT_FOUND", "NAOS_NO_FUEL", "NAOS_OK", "NAOS_TOO_LARGE", "WASI_FUNCTIONS",
    "WASI_MODULE", "CacheStats", "CompiledModule", "ExternInfo", "HostServices",
    "RunResult", "ValidationReport", "WasmEngine", "denied_imports",
]
