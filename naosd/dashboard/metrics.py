"""``/metrics`` in the Prometheus text format (prometheus-client).

Two parts, every naos name prefixed ``naos_`` (docs/metrics.md lists them):

- gauges (and the ``naos_requests_served_total`` counter) read from one
  snapshot of the daemon per scrape: status, agents, budgets, pool queues;
- the counters and histograms folded from the audit log, with the standard
  ``process_*`` and ``python_*`` collectors, from
  :class:`naosd.dashboard.metrics_feed.MetricsFeed`'s registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

STATES = ("stopped", "starting", "running", "stopping", "restarting", "failed", "paused")
POOL_TASK_STATES = ("queued", "running", "completed", "failed", "cancelled")
BUDGET_GAUGES = (
    ("limit_micro", "naos_budget_limit_micro", "Budget limit per period"),
    ("spent_micro", "naos_budget_spent_micro", "Spent in the current period"),
    ("reserved_micro", "naos_budget_reserved_micro", "Held by tasks in flight"),
    ("paused", "naos_budget_paused", "1 while the budget refuses tasks"),
)


def render(snapshot: dict[str, Any], folded: CollectorRegistry | None = None
           ) -> tuple[bytes, str]:
    """The exposition of ``snapshot`` followed by the ``folded`` registry's."""
    registry = CollectorRegistry()
    registry.register(_Snapshot(snapshot))
    body = generate_latest(registry)
    if folded is not None:
        body += generate_latest(folded)
    return body, CONTENT_TYPE_LATEST


class _Snapshot:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status, agents = self._snapshot["status"], self._snapshot["agents"]
        yield GaugeMetricFamily("naos_uptime_seconds", "Seconds since naosd started",
                                value=status["uptime_s"])
        yield GaugeMetricFamily("naos_connections", "Open control-socket connections",
                                value=status["connections"])
        # Renamed from the gauge naos_requests_served (docs/metrics.md).
        yield CounterMetricFamily("naos_requests_served", "Control requests served since "
                                  "naosd started", value=status["requests_served"])
        yield GaugeMetricFamily("naos_audit_head_seq", "Sequence number of the newest "
                                "audit row", value=status["audit_head"])
        yield _agents(agents)
        yield _restarts(agents)
        yield from _budgets(self._snapshot.get("budgets", []))
        yield _pool_tasks(self._snapshot.get("pools", []))


def _agents(agents: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily("naos_agents", "Registered agents by state", labels=["state"])
    counts = Counter(a["state"] for a in agents)
    for state in sorted(set(STATES) | set(counts)):
        family.add_metric([state], counts.get(state, 0))
    return family


def _restarts(agents: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily("naos_agent_restarts", "Restarts of each agent since its "
                               "supervisor started", labels=["agent", "supervisor"])
    for a in agents:
        family.add_metric([a["name"], a["supervisor"]], a["restarts"])
    return family


def _budgets(budgets: list[dict[str, Any]]) -> Iterator[Metric]:
    """Budgets in micro-dollars for the current period; scope "*" is the global one."""
    for key, name, help_ in BUDGET_GAUGES:
        family = GaugeMetricFamily(name, help_, labels=["scope"])
        for b in budgets:
            family.add_metric([b["scope"]], float(b[key]))
        yield family


def _pool_tasks(pools: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily("naos_pool_tasks", "Queue tasks of each pool by status "
                               "(finished ones: those kept, the newest 10,000 a pool)",
                               labels=["pool", "status"])
    for pool in pools:
        for state in POOL_TASK_STATES:
            family.add_metric([pool["name"], state], pool.get(state, 0))
    return family
