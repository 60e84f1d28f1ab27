"""The hardened Thespian actor system that naosd hosts.

Why ``multiprocTCPBase``: it is the base that notices a crashed child in
milliseconds. A child's death raises SIGCHLD in its parent, the signal handler
wakes the transport's ``select`` and the parent gets ``ChildActorExited`` in
~1.3 ms; the Queue base polls every 2 s and deadlocks on bursts of 400 tells.

Why it is hardened: as shipped, every TCP-base actor (and the admin) listens on
``0.0.0.0`` (the bind address is always ``''``) and unpickles whatever arrives,
so anyone who reaches a port runs code as the daemon's user.
:func:`harden_thespian` patches, in this process, before the system starts
(actors are forked, so they inherit every patch):

* bind: ``IPActorAddress.bindArgs`` maps ``''``/``0.0.0.0`` to ``bind_host``
  (127.0.0.1) and ``THESPIAN_BASE_IPADDR`` makes the advertised address match.
  No socket of the tree accepts connections from another host.
* authenticate and bound: ``TCPTransport.serializer`` (the module global used
  as ``serializer.dumps``/``serializer.loads`` at call time) becomes
  :class:`~naosd.runtime.frames.AuthenticatedPickle` and its ``ReceiveBuffer``
  a :class:`~naosd.runtime.frames.FrameBuffer` (see ``naosd.runtime.frames``):
  the announced length is bounded and authenticated by a tag checked after
  32 bytes, the pickle by an HMAC checked *before* ``pickle.loads``. The ACK
  frames (pre-pickled module constants) are re-made with the same codec. A
  refused frame makes Thespian answer ACK+DATAERR and close the connection;
  the actor keeps running. At most ``MAX_PENDING_CONNECTIONS`` accepted
  connections per process may wait for their first frame (the oldest is
  closed). Other local users can still connect to the loopback ports (a
  DoS, no code, bounded memory).
  The MAC gives integrity, not secrecy or replay protection: a local user who
  binds the freed port of a dead actor could read frames still sent to it and
  replay them elsewhere. A private network namespace would close that too.
* process hygiene: every actor process and the logger arm
  ``PR_SET_PDEATHSIG(SIGKILL)`` as their first act (verifying the parent is
  still there). The admin daemonizes itself (``setsid`` + fork); naosd is a
  ``PR_SET_CHILD_SUBREAPER`` so the admin is re-parented to naosd, and the
  admin waits for that before arming its own PDEATHSIG. A SIGKILLed naosd
  therefore takes the whole tree with it. All Thespian processes share the
  admin's session id, which is how :meth:`ActorRuntime.descendant_pids` finds
  them; :meth:`ActorRuntime.shutdown` ends with SIGTERM/SIGKILL and reaping.

Measured here (Python 3.11, thespian 4.0.1, 2 shared cores), hardening on:

* child SIGKILLed -> replacement has answered ``InitChild`` (state "running"
  in GetTree), 30 kills: p50 ~7.5-8 ms / p90 ~9-10 ms from a small (17 MB)
  process image, p50 ~10-12 ms / p99 ~13-18 ms inside pytest (44 MB image:
  every actor is forked from it); worse when other jobs load the CPUs. Phases:
  kill -> ChildActorExited ~1.5-2 ms, fork in the supervisor ~1.5 ms, child
  boot until InitChild arrives ~3 ms, ChildPid back ~0.5-1 ms.
* raw ``ActorSystem.ask`` to the root: p50 ~0.44 ms, p99 ~0.7-0.9 ms (the
  HMAC costs nothing measurable: ARCHITECTURE.md's unhardened p50 is ~0.45 ms).
* Bridge, 8 threads, a fresh private endpoint per ask: ~1,100-1,500 asks/s;
  1,000 concurrent asks complete (no deadlock).
* Listening sockets: one per process (naosd's external endpoint, the admin
  on ``Admin Port``, the logger, each actor), all 127.0.0.1. Without a
  ``Convention Address.IPv4`` capability Thespian opens no convention or UDP
  socket. Forked processes also hold inherited copies of their parent's
  listening socket (naosd's endpoint is open in every actor).

Start the runtime before the process has threads or opens anything it does
not want the admin to inherit (the admin is forked from naosd). Linux only
for the prctl and /proc parts; elsewhere they are no-ops.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import thespian.system.multiprocCommon as mp_common
import thespian.system.systemBase as system_base
import thespian.system.transport as transport_base
import thespian.system.transport.TCPTransport as tcp_transport
from thespian.actors import ActorSystem, ActorSystemException
from thespian.system.transport import IPBase
from thespian.system.transport.streamBuffer import (
    ackDataErrPacket,
    ackPacket,
    toSendBuffer,
)

from actors.messages import Ping, Reply, new_request_id
from naosd.errors import ConfigError, Unavailable
from naosd.runtime.frames import AuthenticatedPickle, bound_pending_connections
from naosd.runtime.procs import PR_SET_CHILD_SUBREAPER, prctl, set_pdeathsig

log = logging.getLogger(__name__)

MIN_SECRET_SIZE = 32
THESPIAN_DEFAULT_ADMIN_PORT = 1900  # collides with SSDP: never use it
REPARENT_WAIT_S = 5.0

DEFAULT_LOG_DEFS: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["stderr"], "level": "WARNING"},
}


# --------------------------------------------------------------------------
# prctl helpers (Linux; no-ops elsewhere)


@dataclass
class _Hardening:
    bind_host: str = "127.0.0.1"
    subreaper: bool = False


_STATE = _Hardening()


def set_child_subreaper() -> bool:
    """Make orphaned descendants (the self-daemonizing admin) re-parent to us."""
    _STATE.subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1)
    return _STATE.subreaper


def _die_with_parent() -> None:
    parent = multiprocessing.parent_process()
    set_pdeathsig(expected_parent=parent.pid if parent else None)


def _await_adoption_then_die_with_starter() -> None:
    """In the daemonized admin: wait to be re-parented to naosd, then arm."""
    starter = multiprocessing.parent_process()  # naosd: the setsid'd child's parent
    if starter is None or starter.pid is None or not _STATE.subreaper:
        return
    deadline = time.monotonic() + REPARENT_WAIT_S
    while os.getppid() != starter.pid:
        if time.monotonic() > deadline or not _alive(starter.pid):
            os._exit(1)
        time.sleep(0.0005)
    set_pdeathsig(expected_parent=starter.pid)


# --------------------------------------------------------------------------
# Patching Thespian


def _loopback_bind_args(self: Any) -> tuple[tuple[Any, ...]]:
    host, *rest = self.bindname
    if host in ("", "0.0.0.0"):
        host = _STATE.bind_host
    return ((host, *rest),)


def _first_in_child(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def start(*args: Any, **kwargs: Any) -> Any:
        _die_with_parent()
        return original(*args, **kwargs)

    start.__naos_hook__ = True  # type: ignore[attr-defined]
    return start


def _adopted_admin_class(base: type) -> type:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        _await_adoption_then_die_with_starter()
        cast(Any, base).__init__(self, *args, **kwargs)

    return type(base.__name__, (base,), {"__init__": __init__})


def _admin_hook(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def start_admin(admin_class: type, *args: Any) -> Any:
        return original(_adopted_admin_class(admin_class), *args)

    start_admin.__naos_hook__ = True  # type: ignore[attr-defined]
    return start_admin


def _install_process_hooks() -> None:
    if getattr(mp_common.startChild, "__naos_hook__", False):
        return
    mp_common.startChild = _first_in_child(mp_common.startChild)
    mp_common.startupASLogger = _first_in_child(mp_common.startupASLogger)
    mp_common.startAdmin = _admin_hook(mp_common.startAdmin)


RETRY_BACKOFF = timedelta(milliseconds=2)


def harden_thespian(secret: bytes, bind_host: str = "127.0.0.1") -> None:
    """Patch Thespian's TCP base in this process (see the module docstring).

    Idempotent; a second call replaces the secret and bind host. Must run
    before the ActorSystem starts so that forked actors inherit it.
    """
    if len(secret) < MIN_SECRET_SIZE:
        raise ConfigError(f"actor secret must be at least {MIN_SECRET_SIZE} bytes")
    _STATE.bind_host = bind_host
    os.environ["THESPIAN_BASE_IPADDR"] = bind_host
    IPBase.thisSystem.add_local_addr(bind_host)
    IPBase.IPActorAddress.bindArgs = property(_loopback_bind_args)
    codec = AuthenticatedPickle(secret)
    tcp_transport.serializer = codec
    tcp_transport.ReceiveBuffer = codec.receive_buffer  # bounded before the MAC
    tcp_transport.ackMsg = toSendBuffer(ackPacket, codec.dumps)
    tcp_transport.ackDataErrMsg = toSendBuffer(ackDataErrPacket, codec.dumps)
    accept = tcp_transport.TCPTransport._acceptNewIncoming
    if not getattr(accept, "__naos_hook__", False):
        tcp_transport.TCPTransport._acceptNewIncoming = bound_pending_connections(accept)
    # Loopback only: a refused or reset connection is known at once, so the
    # first retry need not wait 20 ms (Thespian's default, tuned for LANs).
    # A message to a just-killed actor is then reported undeliverable in a
    # few ms instead of ~40 ms, and naosd resends it to the replacement.
    transport_base.MIN_BACKOFF_DELAY = RETRY_BACKOFF
    _install_process_hooks()


# --------------------------------------------------------------------------
# /proc process table


@dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    session: int


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return _Proc(pid, int(fields[1]), fields[0], int(fields[3]))


def _proc_table() -> list[_Proc]:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    procs = (_read_proc(int(e)) for e in entries if e.isdigit())
    return [p for p in procs if p is not None]


def _alive(pid: int) -> bool:
    proc = _read_proc(pid)
    return proc is not None and proc.state not in ("Z", "X")


def _children_of(pid: int) -> set[int]:
    return {p.pid for p in _proc_table() if p.ppid == pid}


def _closure(table: list[_Proc], seeds: set[int]) -> set[int]:
    """``seeds`` and all their descendants in ``table``."""
    found, frontier = set(seeds), set(seeds)
    while frontier:
        frontier = {p.pid for p in table if p.ppid in frontier} - found
        found |= frontier
    return found


def _reap(pids: set[int]) -> None:
    """Collect the exit status of those of ``pids`` that are our dead children."""
    me = os.getpid()
    for pid in pids:
        proc = _read_proc(pid)
        if proc is not None and proc.ppid == me and proc.state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _kill_tree(seeds: set[int]) -> None:
    """SIGKILL ``seeds`` and their descendants and reap what is ours."""
    pids = _closure(_proc_table(), seeds)
    _signal_all(pids, signal.SIGKILL)
    time.sleep(0.05)
    _reap(pids)


# --------------------------------------------------------------------------
# Ports


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (never Thespian's default 1900)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port != THESPIAN_DEFAULT_ADMIN_PORT:
            return port


def _ensure_nothing_listens(host: str, port: int) -> None:
    """Refuse to attach to a stale admin (or anything else) on ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            raise Unavailable(f"admin port {host}:{port} is already in use")


@contextlib.contextmanager
def _shutdown_delay(seconds: float) -> Iterator[None]:
    """Bound ``ActorSystem.shutdown()`` (Thespian's module constant, 10 s)."""
    saved = system_base.MAX_SYSTEM_SHUTDOWN_DELAY
    system_base.MAX_SYSTEM_SHUTDOWN_DELAY = timedelta(seconds=seconds)
    try:
        yield
    finally:
        system_base.MAX_SYSTEM_SHUTDOWN_DELAY = saved


# --------------------------------------------------------------------------
# The runtime


class ActorRuntime:
    """A running hardened actor system plus its root supervisor.

    Build it with :meth:`start`; end it with :meth:`shutdown`, which never
    leaves a process behind.
    """

    def __init__(self, system: Any, admin_port: int, seeds: set[int], session: int | None) -> None:
        self._system = system
        self._admin_port = admin_port
        self._seeds = seeds
        self._session = session
        self._root: Any = None
        self._closed = False

    @classmethod
    def start(
        cls,
        *,
        secret: bytes,
        admin_port: int | None = None,
        bind_host: str = "127.0.0.1",
        log_defs: dict[str, Any] | None = None,
        startup_timeout_s: float = 10.0,
        capabilities: dict[str, Any] | None = None,
        convention_period: timedelta | None = None,
    ) -> ActorRuntime:
        """Harden Thespian, start the system, create the root supervisor.

        ``capabilities`` are added to the system's (cluster mode: the
        convention address and the node's name and capabilities);
        ``convention_period`` replaces Thespian's member re-registration
        period (7 min 22 s) and its retry period after a failed one.

        Raises ``Unavailable`` if the port is taken or the root does not
        answer a Ping within ``startup_timeout_s``.
        """
        harden_thespian(secret, bind_host)
        if convention_period is not None:
            import thespian.system.admin.convention as convention

            convention.CONVENTION_REREGISTRATION_PERIOD = convention_period
            convention.CONVENTION_RESTART_PERIOD = convention_period
        set_child_subreaper()
        if threading.active_count() > 1:
            log.warning("actor system started with threads running: fork is unsafe")
        port = admin_port or free_port(bind_host)
        _ensure_nothing_listens(bind_host, port)
        runtime = cls._start_system(port, log_defs or DEFAULT_LOG_DEFS, capabilities or {})
        try:
            runtime._start_root(startup_timeout_s)
        except BaseException:
            runtime.shutdown(timeout=startup_timeout_s)
            raise
        return runtime

    @classmethod
    def _start_system(cls, port: int, log_defs: dict[str, Any], extra: dict[str, Any]
                      ) -> ActorRuntime:
        before = _children_of(os.getpid())
        capabilities = {**extra, "Admin Port": port, "Process Startup Method": "fork"}
        try:
            system = ActorSystem(
                "multiprocTCPBase", capabilities, logDefs=log_defs, transientUnique=True
            )
        except ActorSystemException as exc:
            _kill_tree(_children_of(os.getpid()) - before)
            raise Unavailable(f"actor system did not start: {exc}") from exc
        new = _children_of(os.getpid()) - before
        _reap(new)
        seeds = {pid for pid in new if _alive(pid)}
        sessions = {p.session for p in map(_read_proc, seeds) if p is not None}
        return cls(system, port, seeds, min(sessions) if sessions else None)

    def _start_root(self, timeout_s: float) -> None:
        # Imported here: actors import naosd.runtime.actorsys's dependencies.
        from actors.root import RootSupervisor

        try:
            self._root = self._system.createActor(RootSupervisor)
            reply = self._system.ask(self._root, Ping(new_request_id()), timeout_s)
        except ActorSystemException as exc:
            raise Unavailable(f"root supervisor did not start: {exc}") from exc
        if not isinstance(reply, Reply) or not reply.ok:
            raise Unavailable(f"root supervisor did not answer a Ping: {reply!r}")
        root_proc = _read_proc(int(reply.result["pid"]))
        if self._session is None and root_proc is not None:
            self._session = root_proc.session

    @property
    def system(self) -> Any:
        """The Thespian ``ActorSystem`` (not thread-safe: use ``private()``)."""
        return self._system

    @property
    def root(self) -> Any:
        """The root supervisor's ``ActorAddress``."""
        return self._root

    @property
    def admin_port(self) -> int:
        return self._admin_port

    def descendant_pids(self) -> list[int]:
        """Live pids of the admin, logger and every actor (Linux; else [])."""
        table = _proc_table()
        members = {p.pid for p in table if p.session == self._session}
        tree = _closure(table, (self._seeds | members) - {os.getpid()})
        dead = {p.pid for p in table if p.state in ("Z", "X")}
        return sorted(pid for pid in tree if pid not in dead and _alive(pid))

    def shutdown(self, timeout: float) -> None:
        """Stop the system within about ``timeout`` seconds, leaving no process.

        Graceful ``ActorSystem.shutdown()`` first (given 60 % of the time),
        then SIGTERM, then SIGKILL of whatever is left, reaping our children.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        pids = set(self.descendant_pids())
        with _shutdown_delay(max(0.1, timeout * 0.6)):
            try:
                self._system.shutdown()
            except Exception:  # the kill phase below still runs
                log.warning("graceful actor system shutdown failed", exc_info=True)
        self._wait_gone(pids, deadline - 0.3 * timeout)
        self._terminate(pids, deadline)

    def _wait_gone(self, pids: set[int], until: float) -> set[int]:
        while True:
            pids = pids | set(self.descendant_pids())
            _reap(pids)
            left = {pid for pid in pids if _alive(pid)}
            if not left or time.monotonic() >= until:
                return left
            time.sleep(0.01)

    def _terminate(self, pids: set[int], deadline: float) -> None:
        left = self._wait_gone(pids, time.monotonic())
        if not left:
            return
        log.warning("actor processes outlived shutdown, terminating: %s", left)
        _signal_all(left, signal.SIGTERM)
        left = self._wait_gone(left, min(deadline, time.monotonic() + 0.5))
        _signal_all(left, signal.SIGKILL)
        left = self._wait_gone(left, time.monotonic() + 5.0)
        if left:
            log.error("actor processes survived SIGKILL: %s", sorted(left))
