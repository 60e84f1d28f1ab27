"""The running daemon: owns its parts and their order of start and stop.

``main`` builds the Config, takes the instance lock and starts the actor
runtime (before any thread exists: actors are forked); ``Daemon.run`` then
does everything on the event loop, and its ``finally`` stops the parts in
reverse order: stop accepting, drain requests, stop actors, audit, close the
store.  Signals only set flags (see ``install_signals``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from naosd import __version__
from naosd.config import SETTINGS, SETTINGS_BY_KEY, Config
from naosd.control.access import access_of
from naosd.control.api import Api
from naosd.control.peers import Peer
from naosd.control.refusals import AuditedRefusals
from naosd.control.roles import Access
from naosd.control.server import ControlServer
from naosd.errors import ConfigError, NaosError, PermissionDenied
from naosd.runtime.lifecycle import SdNotifier
from naosd.storage.db import AsyncStore

log = logging.getLogger("naosd")

# Settings bound at start (sockets, files, thread pools): a reload reports a
# change to them but keeps the running value until the next start.
RESTART_ONLY = ("daemon.socket", "daemon.state_dir", "daemon.socket_group",
                "daemon.operator_group", "daemon.reader_group",
                "daemon.max_frame_bytes", "storage.db", "storage.synchronous",
                "storage.busy_timeout_ms", "audit.key_file", "dashboard.enabled",
                "dashboard.host", "dashboard.port", "actors.bridge_threads",
                "actors.sandbox_workers",
                *(k for k in SETTINGS_BY_KEY if k.startswith(("cluster.", "llm.", "axis."))))
SETTINGS_ATTR = {k: SETTINGS_BY_KEY[k].attr for k in RESTART_ONLY}


class Daemon:
    def __init__(
        self,
        config: Config,
        runtime: Any,
        *,
        reload: Callable[[], Config],
        notifier: SdNotifier,
        audit_key: Any = None,
    ) -> None:
        self.config = config
        self.audit_key = audit_key  # naosd.storage.audit_key.AuditKey
        self.runtime = runtime
        self._reload = reload
        self.notifier = notifier
        self.started_at = datetime.now(UTC)
        self._started_mono = time.monotonic()
        self.stop_event = asyncio.Event()
        self.stop_reason = ""
        self.db: AsyncStore
        self.bridge: Any = None
        self.server: ControlServer | None = None
        self.dashboard: Any = None
        self.reloads = 0
        self.agents: Any = None
        self.orch: Any = None  # naosd.orchestration.coordinators.Runs
        self.pools: Any = None  # naosd.orchestration.pools.Pools
        self.schedules: Any = None  # naosd.orchestration.scheduler.Scheduler
        self.sandbox: Any = None  # naosd.runtime.sandbox.Sandbox
        self.broker: Any = None
        self.llm: Any = None  # naosd.broker.llm.service.LlmService
        self.trust_gate: Any = None  # naosd.broker.trust_gate.TrustGate
        self.port: Any = None  # naosd.runtime.port.ActorPort
        self.services: Any = None  # naosd.services.Services, once every service is built
        self.agent_hosting: Any = None  # naosd.agents.hosting.AgentHosting
        self.chat: Any = None  # naosd.broker.chat.ChatService
        self.metrics: Any = None  # naosd.dashboard.metrics_feed.MetricsFeed (dashboard on)
        self.mcp_client: Any = None  # naosd.broker.tools.McpClient

    # -- run -----------------------------------------------------------------
    async def run(self) -> int:
        self.install_signals()
        self.db = await AsyncStore.open(
            self.config.storage_db, checkpoint=self.config.audit_checkpoint,
            synchronous=self.config.storage_synchronous,
            busy_timeout_ms=self.config.storage_busy_timeout_ms,
        )
        try:
            await self._check_audit_checkpoint()
            if self.config.dashboard_enabled:
                # /metrics' counters: a fold over the audit log from its head now
                from naosd.dashboard.metrics_feed import MetricsFeed

                self.metrics = await MetricsFeed.open(self.db)
            await self._start_parts()
            await self.stop_event.wait()
        finally:
            await self._stop_parts()
        return 0

    async def _check_audit_checkpoint(self) -> None:
        """Before anything else writes: a missing or garbled checkpoint becomes
        an alert row (see naosd.storage.anchor), never a quiet new file."""
        from naosd.storage.anchor import startup_check

        created = bool(self.audit_key and self.audit_key.created)
        if await self.db.call(lambda s: startup_check(s, key_created=created)):
            await self.db.notify()

    async def _start_parts(self) -> None:
        from actors.messages import InitRoot, PortEcho
        from naosd.agents.service import Agents
        from naosd.broker.service import build_broker
        from naosd.methods import method_table
        from naosd.orchestration.port_handlers import build_orchestration
        from naosd.runtime.bridge import Bridge
        from naosd.runtime.port import ActorPort
        from naosd.runtime.sandbox import Sandbox
        from naosd.services import Services

        self.bridge = Bridge(self.runtime, timeout_s=self.config.actors_ask_timeout,
                             max_workers=self.config.actors_bridge_threads)
        self.sandbox = Sandbox(self.bridge)
        self.port = ActorPort(self.runtime.system, {PortEcho: _echo})
        await self.port.start()
        self.agents = Agents(self)
        self.orch, self.pools, self.schedules = await build_orchestration(
            self.db, self.agents, self.bridge, self.port)
        self._start_llm_and_trust()
        self.broker = build_broker(self.db, self.sandbox, self._thresholds,
                                   gate=self.trust_gate, llm=self.llm)
        await self.broker.start()
        await self._start_mcp_client()
        await self._start_agent_hosting()  # before the tree: handlers connect as they start
        await self._prepare_cluster()
        await self.bridge.ask(InitRoot(uuid.uuid4().hex, str(self.config.storage_db),
                                       str(self.config.audit_checkpoint),
                                       self.config.actors_sandbox_workers,
                                       port=self.port.address))
        await self._start_cluster()
        self.services = Services(
            daemon=self, methods=method_table(), db=self.db, bridge=self.bridge,
            sandbox=self.sandbox,
            agents=self.agents, orch=self.orch, pools=self.pools, broker=self.broker,
            llm=self.llm, trust_gate=self.trust_gate, schedules=self.schedules,
            metrics=self.metrics, mcp_client=self.mcp_client)
        await self.db.audit("daemon.start", pid=os.getpid(), version=__version__,
                            socket=str(self.config.socket), mode=self.config.mode)
        self.server = self._make_server()
        await self.server.start()
        await self._start_dashboard()
        self.schedules.start()  # due schedules fire from now on; stopped with the runs
        watchdog = asyncio.get_running_loop().create_task(self._watchdog())
        self._watchdog_task = watchdog
        self._reaper_task = asyncio.get_running_loop().create_task(self._reap_idle_agents())
        self.notifier.notify("READY=1", f"STATUS=serving on {self.config.socket}",
                             f"MAINPID={os.getpid()}")
        self._announce()

    # -- the agent side: channels, the agent API, the run path (naosd.agents) ----------
    async def _start_agent_hosting(self) -> None:
        from naosd.agents.hosting import build_agent_hosting
        from naosd.broker.chat import ChatService
        from naosd.runtime import hosting

        self.chat = ChatService(self.broker.spender, self.llm, models=self.config.llm_models)
        facts = hosting.current()
        if facts is None:  # an actor system started without hosting facts (tests)
            return
        self.agent_hosting = build_agent_hosting(
            facts, self.db, self.agents, gate=self.trust_gate, chat=self.chat,
            broker=self.broker, cost=self.broker.cost,
            tools=self.mcp_client.calls if self.mcp_client is not None else None)
        await self.agent_hosting.channels.start()

    async def _stop_agent_hosting(self) -> None:
        if self.agent_hosting is not None:
            await self.agent_hosting.channels.close()
        if self.chat is not None:
            await self.chat.aclose()

    # -- MCP client: tool servers agents call (naosd.broker.tools, docs/interop.md) ----
    async def _start_mcp_client(self) -> None:
        """The registered tool servers, started in the background (a stdio server
        is naosd's child); ``self.mcp_client.calls`` is the agent API's ``Tools``."""
        from naosd.broker.tools import build_mcp_client

        self.mcp_client = build_mcp_client(self.db, self.broker.spender, self.config,
                                           os.environ)
        await self.mcp_client.servers.start()

    async def _stop_mcp_client(self) -> None:
        if self.mcp_client is not None:
            await self.mcp_client.servers.aclose()  # each stdio server: stdin, TERM, KILL

    # -- cluster mode (docs/cluster.md) -----------------------------------------
    async def _prepare_cluster(self) -> None:
        """Before the supervisors start: the node table they place agents by."""
        from naosd.storage import cluster as cluster_store

        c = self.config
        if not c.cluster_enabled:
            await self.db.call(cluster_store.clear)
            return
        leader = c.cluster_leader or c.cluster_bind
        self.cluster_run = uuid.uuid4().hex
        await self.db.call(lambda s: cluster_store.reset(
            s, name=c.cluster_node, address=c.cluster_bind,
            capabilities=list(c.cluster_capabilities), leader=leader, run=self.cluster_run))

    async def _start_cluster(self) -> None:
        """On the leader: start the monitor that tracks and beats the members.
        On a member: fence what a leader placed here once it stops beating."""
        c = self.config
        if not c.cluster_enabled:
            return
        if c.cluster_leader and c.cluster_leader != c.cluster_bind:
            from naosd.runtime import fence

            self._fence_task = asyncio.get_running_loop().create_task(fence.fence_loop(
                self, c.state_dir / "cluster", c.cluster_heartbeat_s,
                c.cluster_heartbeat_s * c.cluster_lost_after))
            return
        from actors.cluster_messages import InitCluster

        await self.bridge.ask(InitCluster(
            uuid.uuid4().hex, c.cluster_node, c.cluster_bind, tuple(c.cluster_capabilities),
            True, c.cluster_heartbeat_s, c.cluster_lost_after, str(c.storage_db),
            str(c.audit_checkpoint), self.cluster_run))

    async def cluster_view(self) -> dict[str, Any] | None:
        """Nodes as this node sees them (None when cluster mode is off)."""
        from naosd.storage import cluster as cluster_store

        c = self.config
        if not c.cluster_enabled:
            return None
        nodes = await self.db.call(cluster_store.node_rows)
        leader = c.cluster_leader or c.cluster_bind
        return {"node": c.cluster_node, "address": c.cluster_bind, "leader": leader,
                "is_leader": leader == c.cluster_bind, "heartbeat_s": c.cluster_heartbeat_s,
                "lost_after": c.cluster_lost_after, "nodes": nodes}

    def _thresholds(self) -> Any:
        from actors.domain.routing import Thresholds

        return Thresholds(self.config.broker_skill_threshold, self.config.broker_wasm_threshold)

    def _start_llm_and_trust(self) -> None:
        from naosd.broker.axis import AxisConfig
        from naosd.broker.llm.service import LlmService
        from naosd.broker.trust_gate import TrustGate

        self.llm = LlmService(self.config, self.db)
        self.trust_gate = TrustGate(self.db, AxisConfig.from_config(self.config))

    async def _stop_llm_and_trust(self) -> None:
        for part in (self.llm, self.trust_gate):
            if part is not None:
                try:
                    await part.aclose()
                except Exception:  # keep stopping the rest
                    log.exception("stopping %s failed", type(part).__name__)

    def _announce(self) -> None:
        info = self.dashboard_info(with_token=False)
        log.info("naosd %s ready (pid %d)", __version__, os.getpid())
        log.info("socket: %s", self.config.socket)
        if info.get("url"):
            log.info("dashboard: %s (log in with: naosctl dashboard)", info["url"])

    async def _stop_parts(self) -> None:
        log.info("stopping (%s)", self.stop_reason or "requested")
        self.notifier.notify("STOPPING=1", f"STATUS=stopping: {self.stop_reason}")
        for name in ("_watchdog_task", "_reaper_task", "_fence_task"):
            task = getattr(self, name, None)
            if task is not None:
                task.cancel()
        budget = self.config.shutdown_timeout
        if self.server is not None:
            await self.server.close(drain_timeout=budget / 2)
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.metrics is not None:
            await self.metrics.aclose()
        if self.orch is not None:
            await self.schedules.close()  # what is due fires at the next start
            await self.orch.close()  # runs stay in SQLite and recover at the next start
        if self.pools is not None:
            await self.pools.close()
        await self._stop_mcp_client()
        if self.bridge is not None:
            self.bridge.close()
        if self.port is not None:
            await self.port.aclose()
        await asyncio.to_thread(self.runtime.shutdown, budget / 2)  # actors stop handlers
        await self._stop_agent_hosting()
        await self._stop_llm_and_trust()
        with contextlib.suppress(NaosError):
            await self.db.audit("daemon.stop", pid=os.getpid(), reason=self.stop_reason,
                                uptime_s=round(self.uptime, 3))
        await self.db.close()

    # -- signals and reload ----------------------------------------------------
    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self.reload_config("SIGHUP"))

    def request_stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    async def reload_config(self, origin: str) -> dict[str, Any]:
        """Re-read the configuration; apply what can change while running.

        A bad file leaves the running configuration untouched and raises
        ConfigError (audited as ``config.reload_failed``)."""
        self.notifier.notify("RELOADING=1", _monotonic_usec())
        try:
            new = await asyncio.to_thread(self._reload)
        except ConfigError as exc:
            log.error("config reload failed: %s", exc.message)
            await self.db.audit("config.reload_failed", origin=origin, error=exc.message)
            self.notifier.notify("READY=1", "STATUS=reload failed; old config kept")
            raise
        result = self._apply_config(new)
        self.reloads += 1
        await self.db.audit("config.reload", origin=origin, **result)
        self.notifier.notify("READY=1", f"STATUS=serving on {self.config.socket}")
        log.info("configuration reloaded (%s)", origin)
        return result

    def _apply_config(self, new: Config) -> dict[str, Any]:
        from naosd.config import replace
        from naosd.logs import set_level_and_format

        old = self.config
        changed = [s.key for s in SETTINGS if getattr(new, s.attr) != getattr(old, s.attr)]
        needs_restart = [k for k in changed if k in RESTART_ONLY]
        keep = {SETTINGS_ATTR[k]: getattr(old, SETTINGS_ATTR[k]) for k in RESTART_ONLY}
        self.config = replace(new, **keep)
        set_level_and_format(self.config.log_level, self.config.log_format)
        if self.server is not None:
            self.server.max_connections = self.config.max_connections
            self.server.max_connections_per_uid = self.config.max_connections_per_uid
            self.server.handshake_timeout = self.config.handshake_timeout
        for key in needs_restart:
            log.warning("config %s changed; it takes effect after a restart", key)
        return {"changed": changed, "needs_restart": needs_restart}

    async def _reap_idle_agents(self) -> None:
        """Stop on-demand agents that have been idle (agents.idle_timeout)."""
        while True:
            idle_s = self.config.agents_idle_timeout
            await asyncio.sleep(min(max(idle_s / 4, 0.2), 30.0) if idle_s else 30.0)
            if not idle_s:
                continue
            try:
                reaped = await self.agents.reap_idle(idle_s)
            except NaosError as exc:
                log.warning("idle agent reaper: %s", exc.message)
                continue
            if reaped:
                log.info("deactivated idle agents: %s", ", ".join(reaped))

    # -- watchdog ----------------------------------------------------------------
    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- peers -------------------------------------------------------------------
    def authorize(self, peer: Peer) -> str:
        """``peer``'s role (operator or reader); raises PermissionDenied."""
        role = self.access.role(peer.uid, peer.gid, peer.groups)
        if role is None:
            raise PermissionDenied(self.access.refusal(peer.uid))
        return role

    def _make_server(self) -> ControlServer:
        self.access: Access = access_of(self.config)
        if self.config.sources.get("daemon.operator_group", "").endswith("deprecated)"):
            log.warning("daemon.socket_group is deprecated: call it daemon.operator_group")
        group = self.access.socket_group
        return ControlServer(
            self.config.socket, Api(self.services), authorize=self.authorize,
            refusals=AuditedRefusals(self.db.audit), max_frame=self.config.max_frame_bytes,
            max_connections=self.config.max_connections,
            max_connections_per_uid=self.config.max_connections_per_uid,
            handshake_timeout=self.config.handshake_timeout,
            server_info={"server": f"naosd/{__version__}", "pid": os.getpid()},
            socket_mode=0o660 if group is not None else 0o600,
            socket_gid=None if group is None else group.gid,
        )

    # -- dashboard ---------------------------------------------------------------
    async def _start_dashboard(self) -> None:
        if not self.config.dashboard_enabled:
            return
        from naosd.dashboard import DashboardServer

        token = _load_or_create_token(self.config.dashboard_token_file)
        self.dashboard = DashboardServer(self.services, token)
        await self.dashboard.start(self.config.dashboard_host, self.config.dashboard_port)

    def dashboard_info(self, *, with_token: bool) -> dict[str, Any]:
        if self.dashboard is None:
            return {"enabled": False, "url": None}
        url = self.dashboard.url
        if with_token:
            return {"enabled": True, "url": url, "login_url": f"{url}?token={self.dashboard.token}"}
        return {"enabled": True, "url": url}

    # -- status ------------------------------------------------------------------
    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started_mono

    async def actors_ping(self) -> dict[str, Any]:
        from actors.messages import Ping

        started = time.perf_counter()
        reply = await self.bridge.ask(Ping(request_id=uuid.uuid4().hex))
        return {"pong": True, "rtt_ms": (time.perf_counter() - started) * 1e3,
                "result": reply.result}

    async def actor_tree(self) -> dict[str, Any]:
        from actors.messages import GetTree

        try:
            reply = await self.bridge.ask(GetTree(request_id=uuid.uuid4().hex))
        except NaosError as exc:
            return {"name": "root", "kind": "supervisor", "state": "unreachable",
                    "error": exc.message, "children": []}
        tree: dict[str, Any] = reply.result
        return tree

    async def status(self) -> dict[str, Any]:
        head = await self.db.call(lambda s: s.audit_head())
        server = self.server
        return {
            "version": __version__, "pid": os.getpid(), "mode": self.config.mode,
            "started_at": self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "uptime_s": round(self.uptime, 3), "socket": str(self.config.socket),
            "db": str(self.config.storage_db),
            "config_file": str(self.config.config_file) if self.config.config_file_loaded
            else None,
            "dashboard": self.dashboard_info(with_token=False),
            "connections": len(server.connections) if server else 0,
            "requests_served": server.requests_served if server else 0,
            "reloads": self.reloads,
            "audit_head": head.seq if head else 0,
            "actors": await self.actor_tree(),
            "cluster": await self.cluster_view(),
        }


async def _echo(request: Any) -> Any:
    return request.payload


def _load_or_create_token(path: Any) -> str:
    try:
        token = path.read_text().strip()
        if len(token) >= 32:
            return str(token)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _monotonic_usec() -> str:
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
