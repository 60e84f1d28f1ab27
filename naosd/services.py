"""The services the control methods and the dashboard use, as one typed value.

The composition root (``naosd.daemon``) builds every service from narrow
dependencies and hands this value to the control layer: a method gets the
services it names, never "the daemon".  :class:`DaemonControl` is the small
part of the daemon itself a method may use (status, stop, reload, the
dashboard's address).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from naosd.agents.service import Agents
    from naosd.broker.llm.service import LlmService
    from naosd.broker.service import Broker
    from naosd.broker.tools import McpClient
    from naosd.broker.trust_gate import TrustGate
    from naosd.config import Config
    from naosd.orchestration.coordinators import Runs
    from naosd.orchestration.pools import Pools
    from naosd.orchestration.scheduler import Scheduler
    from naosd.runtime.bridge import Bridge
    from naosd.runtime.sandbox import Sandbox
    from naosd.storage.db import AsyncStore


class DaemonControl(Protocol):
    """What of the daemon itself a control method may use."""

    @property
    def config(self) -> Config: ...

    async def status(self) -> dict[str, Any]: ...

    def request_stop(self, reason: str) -> None: ...

    async def reload_config(self, origin: str) -> dict[str, Any]: ...

    def dashboard_info(self, *, with_token: bool) -> dict[str, Any]: ...

    async def cluster_view(self) -> dict[str, Any] | None: ...

    async def actors_ping(self) -> dict[str, Any]: ...


class FoldedMetrics(Protocol):
    """The counters and histograms folded from the audit log
    (:class:`naosd.dashboard.metrics_feed.MetricsFeed`)."""

    @property
    def registry(self) -> CollectorRegistry: ...

    async def catch_up(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Services:
    daemon: DaemonControl
    # every method served, by name: naosd.control.table.Method values (that layer is above)
    methods: Mapping[str, Any]
    db: AsyncStore
    bridge: Bridge
    sandbox: Sandbox
    agents: Agents
    orch: Runs
    pools: Pools
    broker: Broker
    llm: LlmService
    trust_gate: TrustGate
    schedules: Scheduler
    metrics: FoldedMetrics | None = None  # with the dashboard: /metrics' counters
    mcp_client: McpClient | None = None  # the tool servers agents call (naosctl mcp add)

    @property
    def config(self) -> Config:
        """The configuration now (a reload replaces it)."""
        return self.daemon.config
