"""``/metrics`` in the Prometheus text format (prometheus-client), every
name prefixed ``naos_``.  Built from one snapshot per scrape."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STATES = ("stopped", "starting", "running", "stopping", "restarting", "failed", "paused")


def render(snapshot: dict[str, Any]) -> tuple[bytes, str]:
    registry = CollectorRegistry()
    status, agents = snapshot["status"], snapshot["agents"]
    Gauge("naos_uptime_seconds", "Seconds since naosd started",
          registry=registry).set(status["uptime_s"])
    Gauge("naos_connections", "Open control-socket connections",
          registry=registry).set(status["connections"])
    Gauge("naos_requests_served", "Control requests served since start",
          registry=registry).set(status["requests_served"])
    Gauge("naos_audit_head_seq", "Sequence number of the newest audit row",
          registry=registry).set(status["audit_head"])
    by_state = Gauge("naos_agents", "Registered agents by state", ["state"], registry=registry)
    counts = Counter(a["state"] for a in agents)
    for state in sorted(set(STATES) | set(counts)):
        by_state.labels(state=state).set(counts.get(state, 0))
    restarts = Gauge("naos_agent_restarts", "Restarts of each agent since its supervisor "
                     "started", ["agent", "supervisor"], registry=registry)
    for a in agents:
        restarts.labels(agent=a["name"], supervisor=a["supervisor"]).set(a["restarts"])
    _budgets(registry, snapshot.get("budgets", []))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _budgets(registry: CollectorRegistry, budgets: list[dict[str, Any]]) -> None:
    """Budgets in micro-dollars for the current period; scope "*" is the global one."""
    gauges = {
        "limit_micro": Gauge("naos_budget_limit_micro", "Budget limit per period",
                             ["scope"], registry=registry),
        "spent_micro": Gauge("naos_budget_spent_micro", "Spent in the current period",
                             ["scope"], registry=registry),
        "reserved_micro": Gauge("naos_budget_reserved_micro", "Held by tasks in flight",
                                ["scope"], registry=registry),
        "paused": Gauge("naos_budget_paused", "1 while the budget refuses tasks",
                        ["scope"], registry=registry),
    }
    for b in budgets:
        for key, gauge in gauges.items():
            gauge.labels(scope=b["scope"]).set(float(b[key]))
