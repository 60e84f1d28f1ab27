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

Start-up: the admin port is held from the moment it is picked until the admin
listens (:mod:`naosd.runtime.admin_port`); an admin that still does not come
up is retried on a fresh port (:data:`ADMIN_ATTEMPTS` tries, each logged); and
what a killed predecessor left running is killed first
(:mod:`naosd.runtime.leftovers`).

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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
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
from naosd.runtime.admin_port import free_port, hold_admin_port
from naosd.runtime.frames import AuthenticatedPickle, FrameRejected, bound_pending_connections
from naosd.runtime.leftovers import SessionRecord, kill_stale
from naosd.runtime.procs import PR_SET_CHILD_SUBREAPER, prctl, set_pdeathsig
from naosd.runtime.proctable import (
    alive,
    children_of,
    closure,
    kill_tree,
    proc_table,
    read_proc,
    reap,
    signal_all,
)

__all__ = ["ActorRuntime", "AuthenticatedPickle", "FrameRejected", "free_port",
           "harden_thespian", "set_child_subreaper"]

log = logging.getLogger(__name__)

MIN_SECRET_SIZE = 32
REPARENT_WAIT_S = 5.0
ADMIN_ATTEMPTS = 4
ADMIN_START_WAIT_S = 4.0  # Thespian retries its admin for this + 1 s, then gives up

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
        if time.monotonic() > deadline or not alive(starter.pid):
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
        self._record_path: Path | None = None

    @classmethod
    def start(
        cls,
        *,
        secret: bytes,
        admin_port: int | None = None,
        prefer_port: int | None = None,
        bind_host: str = "127.0.0.1",
        log_defs: dict[str, Any] | None = None,
        startup_timeout_s: float = 10.0,
        capabilities: dict[str, Any] | None = None,
        convention_period: timedelta | None = None,
        record: Path | None = None,
    ) -> ActorRuntime:
        """Harden Thespian, start the system, create the root supervisor.

        ``admin_port`` is required (cluster mode: members know it);
        ``prefer_port`` is tried first and replaced by a free port if taken;
        with neither, a free port is picked. ``capabilities`` are added to
        the system's (cluster mode: the convention address and the node's
        name and capabilities); ``convention_period`` replaces Thespian's
        member re-registration period (7 min 22 s) and its retry period after
        a failed one. ``record`` (``<state_dir>/actors.session``): first kill
        what a killed naosd recorded there and left running, then record this
        system's session for the next start.

        Raises ``Unavailable`` if the required port is taken, the admin does
        not come up in :data:`ADMIN_ATTEMPTS` tries, or the root does not
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
        if record is not None:
            kill_stale(record)
        runtime = cls._start_admin(bind_host, admin_port, prefer_port,
                                   log_defs or DEFAULT_LOG_DEFS, capabilities or {})
        try:
            runtime._start_root(startup_timeout_s)
        except BaseException:
            runtime.shutdown(timeout=startup_timeout_s)
            raise
        if record is not None:
            runtime._record(record)
        return runtime

    @classmethod
    def _start_admin(cls, host: str, required: int | None, preferred: int | None,
                     log_defs: dict[str, Any], extra: dict[str, Any]) -> ActorRuntime:
        """Start the system on a held port; retry on a fresh one (bounded) when
        the admin does not come up."""
        for attempt in range(1, ADMIN_ATTEMPTS + 1):
            held = hold_admin_port(host, required, preferred if attempt == 1 else None)
            port = int(held.getsockname()[1])
            try:
                with held, _shutdown_delay(ADMIN_START_WAIT_S):  # Thespian's wait: 11 s
                    return cls._start_system(port, log_defs, extra)
            except Unavailable as exc:
                if attempt == ADMIN_ATTEMPTS:
                    raise
                log.warning("actor system admin did not come up on %s:%d (%s); retrying on "
                            "%s (attempt %d of %d)", host, port, exc.message,
                            "the same port" if required else "a fresh port", attempt + 1,
                            ADMIN_ATTEMPTS)
        raise AssertionError("unreachable")  # the loop returns or raises

    @classmethod
    def _start_system(cls, port: int, log_defs: dict[str, Any], extra: dict[str, Any]
                      ) -> ActorRuntime:
        before = children_of(os.getpid())
        capabilities = {**extra, "Admin Port": port, "Process Startup Method": "fork"}
        try:
            system = ActorSystem(
                "multiprocTCPBase", capabilities, logDefs=log_defs, transientUnique=True
            )
        except ActorSystemException as exc:
            kill_tree(children_of(os.getpid()) - before)
            raise Unavailable(f"actor system did not start: {exc}") from exc
        new = children_of(os.getpid()) - before
        reap(new)
        seeds = {pid for pid in new if alive(pid)}
        sessions = {p.session for p in map(read_proc, seeds) if p is not None}
        return cls(system, port, seeds, min(sessions) if sessions else None)

    def _record(self, path: Path) -> None:
        record = SessionRecord.of_session(self._session, self._admin_port) \
            if self._session is not None else None
        if record is None:
            return
        with contextlib.suppress(OSError):  # only a help for the next start
            record.save(path)
            self._record_path = path

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
        root_proc = read_proc(int(reply.result["pid"]))
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
        table = proc_table()
        members = {p.pid for p in table if p.session == self._session}
        tree = closure(table, (self._seeds | members) - {os.getpid()})
        dead = {p.pid for p in table if p.state in ("Z", "X")}
        return sorted(pid for pid in tree if pid not in dead and alive(pid))

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
        if self._record_path is not None:  # nothing is left for the next start to kill
            with contextlib.suppress(OSError):
                self._record_path.unlink()

    def _wait_gone(self, pids: set[int], until: float) -> set[int]:
        while True:
            pids = pids | set(self.descendant_pids())
            reap(pids)
            left = {pid for pid in pids if alive(pid)}
            if not left or time.monotonic() >= until:
                return left
            time.sleep(0.01)

    def _terminate(self, pids: set[int], deadline: float) -> None:
        left = self._wait_gone(pids, time.monotonic())
        if not left:
            return
        log.warning("actor processes outlived shutdown, terminating: %s", left)
        signal_all(left, signal.SIGTERM)
        left = self._wait_gone(left, min(deadline, time.monotonic() + 0.5))
        signal_all(left, signal.SIGKILL)
        left = self._wait_gone(left, time.monotonic() + 5.0)
        if left:
            log.error("actor processes survived SIGKILL: %s", sorted(left))
