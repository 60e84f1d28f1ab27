"""A pause budget that refuses tasks says "paused", with since when and why
(issue 12.6: an agent was refused 118 tasks while its status said 95 % ok)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from harness import Naosd, reap, start_naosd

pytestmark = pytest.mark.e2e

TOTAL = "total these invoices: 1, 2"  # number-total: 5 micro-dollars a call


def ctl_json(daemon: Naosd, *args: str) -> dict:
    out = daemon.ctl(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def ann_status(daemon: Naosd) -> dict:
    [ann] = ctl_json(daemon, "cost", "status", "ann")["budgets"]
    return ann


def dashboard_cost(daemon: Naosd) -> dict:
    info = ctl_json(daemon, "dashboard")
    token = info["login_url"].split("token=", 1)[1]
    request = urllib.request.Request(info["url"] + "api/v1/cost",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read())


def test_a_pause_budget_exhausted_by_real_tasks_says_paused(base: Path):
    d = start_naosd(base)
    try:
        d.ctl("axis", "register", "ann", "--t-score", "900", "--c-score", "950", check=True)
        ctl_json(d, "cost", "set", "ann", "--budget", "$0.000012/day", "--action", "pause")
        for _ in range(2):
            assert d.ctl("broker", "execute", TOTAL, "--agent", "ann").returncode == 0
        ann = ann_status(d)
        assert (ann["spent_micro"], ann["state"], ann["paused"]) == (10, "alerting", False)
        refused = d.ctl("broker", "execute", TOTAL, "--agent", "ann")  # 10 + 5 > 12
        assert refused.returncode == 1 and "budget exceeded" in refused.stderr
        ann = ann_status(d)
        assert (ann["state"], ann["paused"], ann["spent_micro"]) == ("paused", True, 10)
        assert ann["reason"] == ("limit reached: $0.00001 spent of the $0.000012/day limit, "
                                 "a task needing $0.000005 was refused")
        since = ann["since"]
        assert since is not None
        again = d.ctl("broker", "execute", TOTAL, "--agent", "ann")
        assert again.returncode == 1 and f"budget paused since {since}" in again.stderr
        text = d.ctl("cost", "status", check=True).stdout
        assert f"ann: paused since {since}: limit reached" in text
        paused_rows = json.loads(d.ctl("audit", "tail", "--type", "cost.paused", "--json",
                                       check=True).stdout)
        assert [(r["agent"], r["detail"]["since"]) for r in paused_rows] == [("ann", since)]
        [view] = dashboard_cost(d)["budgets"]
        assert (view["agent"], view["state"], view["since"]) == ("ann", "paused", since)
        assert view["reason"] == ann["reason"]
        assert d.stop() == 0
        assert not reap(d)

        d = start_naosd(base)  # the pause, its time and reason survive a restart
        ann = ann_status(d)
        assert (ann["state"], ann["since"], ann["reason"]) == (
            "paused", since, paused_rows[0]["detail"]["reason"])
        assert ctl_json(d, "cost", "reset", "ann")["state"] == "ok"
        assert d.ctl("broker", "execute", TOTAL, "--agent", "ann").returncode == 0
    finally:
        assert not reap(d)
