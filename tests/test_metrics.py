"""/metrics' exposition (naosd/dashboard/metrics.py): the snapshot's gauges
and the requests counter, the folded families and the standard collectors in
one text that parses, and docs/metrics.md's table naming exactly what is
served, with each type."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from naosd.dashboard.metrics import render
from naosd.dashboard.metrics_feed import build_registry

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(naos_[a-z_]+)` \| (counter|gauge|histogram) \|\s*([a-z, ]*?)\s*\|", re.M)

SNAPSHOT = {
    "status": {"uptime_s": 12.5, "connections": 2, "requests_served": 40, "audit_head": 99},
    "agents": [{"name": "echo", "state": "running", "supervisor": "agents", "restarts": 1},
               {"name": "odd", "state": "unheard-of", "supervisor": "team", "restarts": 0}],
    "budgets": [{"scope": "*", "limit_micro": 2_000_000, "spent_micro": 5,
                 "reserved_micro": 1, "paused": False}],
    "pools": [{"name": "fan", "queued": 3, "running": 1, "completed": 7, "failed": 0,
               "cancelled": 1}],
}


def scraped() -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    registry, _ = build_registry(lambda: 7)
    body, content_type = render(SNAPSHOT, registry)
    assert content_type.startswith("text/plain; version=")
    return {f.name: (f.type, [(s.labels, s.value) for s in f.samples])
            for f in text_string_to_metric_families(body.decode())}


def test_the_snapshot_gauges_and_the_requests_counter():
    families = scraped()
    assert families["naos_requests_served"] == ("counter", [({}, 40.0)])
    assert families["naos_uptime_seconds"] == ("gauge", [({}, 12.5)])
    states = {s["state"]: v for s, v in families["naos_agents"][1]}
    assert states["running"] == 1 and states["unheard-of"] == 1 and states["failed"] == 0
    assert ({"scope": "*"}, 2_000_000.0) in families["naos_budget_limit_micro"][1]
    assert families["naos_budget_paused"][1] == [({"scope": "*"}, 0.0)]
    tasks = {s["status"]: v for s, v in families["naos_pool_tasks"][1]}
    assert tasks == {"queued": 3, "running": 1, "completed": 7, "failed": 0, "cancelled": 1}


def test_the_folded_families_and_the_standard_collectors_are_served():
    families = scraped()
    assert families["naos_agent_runs"][0] == "counter"  # the parser drops _total
    assert families["naos_agent_run_duration_seconds"][0] == "histogram"
    assert families["naos_metrics_audit_seq"] == ("gauge", [({}, 7.0)])
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(
        families)
    assert not [n for n in families if n.endswith("_created")]


def test_docs_list_every_metric_served_with_its_type_and_labels():
    documented = {name: (kind, labels) for name, kind, labels in ROW.findall(DOC.read_text())}
    served = {}
    registry, _ = build_registry(lambda: 7)
    body, _ = render(SNAPSHOT, registry)
    for family in text_string_to_metric_families(body.decode()):
        if not family.name.startswith("naos_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        served[name] = (family.type, labels)
    assert set(documented) == set(served)
    for name, (kind, labels) in documented.items():
        want = {part.strip() for part in labels.split(",") if part.strip()}
        have_kind, have_labels = served[name]
        assert kind == have_kind, name
        assert have_labels <= want, name  # families without samples show no labels


def test_docs_name_every_label_of_the_folded_families():
    from naosd.dashboard.metrics_fold import FAMILIES

    documented = {name: labels for name, _, labels in ROW.findall(DOC.read_text())}
    for name, family in FAMILIES.items():
        assert documented[name].replace(" ", "").split(",") == list(family.labels) or (
            not family.labels and documented[name].strip() == ""), name
