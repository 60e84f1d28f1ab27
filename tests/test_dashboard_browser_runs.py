"""The dashboard's sagas, workflows and pools in a real headless Chromium
against the real daemon (issue 16): the timeline's colour legend, actions
on a run (retry compensation, resolve with its note shown), the filters, a
compensated run not in a completed run's green, pools whose member chips,
drained mark and done counts are true, and runs awaiting approval: their
badge, and approve, reject and cancel from the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dash_browser import browser, dashboard, needs_chromium, opened
from harness import Naosd
from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.e2e, needs_chromium]
__all__ = ["browser"]

DECLINE = """
def handle(message, ctx):
    raise RuntimeError("card declined")
"""
OFFLINE = """
def handle(message, ctx):
    raise RuntimeError("warehouse offline")
"""


def make_sagas(daemon: Naosd, tmp_path: Path) -> None:
    """order: reserve (undone by release, which fails), then charge (always
    declined), so a run ends compensation_failed; refund: one step that works."""
    (tmp_path / "decline.py").write_text(DECLINE)
    (tmp_path / "offline.py").write_text(OFFLINE)
    daemon.ctl("create", "inventory", "--template", "echo", check=True)
    daemon.ctl("create", "payment", "--source", str(tmp_path / "decline.py"), check=True)
    daemon.ctl("create", "release", "--source", str(tmp_path / "offline.py"), check=True)
    daemon.ctl("saga", "create", "order", "--compensation-attempts", "1",
               "--compensation-delay", "0.1", check=True)
    daemon.ctl("saga", "add-step", "order", "reserve", "--agent", "inventory",
               "--compensate", "release", check=True)
    daemon.ctl("saga", "add-step", "order", "charge", "--agent", "payment", check=True)
    daemon.ctl("saga", "create", "refund", check=True)
    daemon.ctl("saga", "add-step", "refund", "pay-back", "--agent", "inventory", check=True)


def run_saga(daemon: Naosd, name: str) -> dict:
    return json.loads(daemon.ctl("saga", "run", name, "--input", "{}", "--json").stdout)


def run_row(page: Page, run_id: str):
    return page.locator(f'[data-testid="runs-table"] tr[data-run="{run_id}"]')


def badge_colour(page: Page, run_id: str) -> str:
    return run_row(page, run_id).locator("span.st").first.evaluate(
        "e => getComputedStyle(e).backgroundColor")


@pytest.mark.timeout(240)
def test_run_actions_resolve_note_legend_and_colours(daemon: Naosd, browser: Browser,
                                                     tmp_path: Path):
    make_sagas(daemon, tmp_path)
    stuck, other = run_saga(daemon, "order"), run_saga(daemon, "order")
    done = run_saga(daemon, "refund")
    assert (stuck["status"], other["status"], done["status"]) == \
        ("compensation_failed", "compensation_failed", "completed")
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.get_by_test_id("runs-section")).to_be_visible()
        run_row(page, stuck["run_id"]).click()
        detail = page.get_by_test_id("run-detail")
        expect(detail.get_by_test_id("run-status")).to_have_text("compensation_failed")

        # every colour on the timeline is explained by its legend
        bars = detail.locator('[data-testid="timeline"] g[data-step]')
        expect(bars).to_have_count(3)
        fills = bars.evaluate_all("""gs => gs.map(g => [g.dataset.status,
            getComputedStyle(g.querySelector("rect")).fill])""")
        legend = detail.get_by_test_id("timeline-legend").locator("[data-legend-status]") \
            .evaluate_all("""ss => Object.fromEntries(ss.map(s => [s.dataset.legendStatus,
                getComputedStyle(s.querySelector("i")).backgroundColor]))""")
        assert {status for status, _ in fills} == set(legend) == {"completed", "failed"}
        assert all(legend[status] == fill for status, fill in fills), (fills, legend)

        # only what this build has and the run's state allows is offered
        actions = detail.get_by_test_id("run-actions")
        for verb in ("cancel", "approve", "reject"):  # not for a run that has ended
            expect(actions.locator(f'button[data-run-action="{verb}"]')).to_have_count(0)

        # the compensating agent is fixed, then the compensation retried from the page
        fixed = tmp_path / "fixed.py"
        fixed.write_text("def handle(message, ctx):\n    return message\n")
        daemon.ctl("update", "release", "--source", str(fixed), check=True)  # new code
        actions.locator('button[data-run-action="retry_compensation"]').click()
        expect(detail.get_by_test_id("run-action-outcome")).to_have_attribute("data-ok", "true")
        expect(detail.get_by_test_id("run-status")).to_have_text("compensated")
        expect(detail.locator('g[data-step="reserve"][data-phase="compensate"]').last) \
            .to_have_attribute("data-status", "compensated")
        expect(detail.locator('[data-legend-status="compensated"]')).to_be_visible()
        expect(actions.locator("button")).to_have_count(0)  # nothing left to do
        expect(run_row(page, stuck["run_id"])).to_have_attribute("data-status", "compensated")

        # compensated is not completed's green
        expect(run_row(page, done["run_id"])).to_have_attribute("data-status", "completed")
        assert badge_colour(page, done["run_id"]) == "rgb(23, 128, 61)"
        assert badge_colour(page, stuck["run_id"]) == "rgb(109, 75, 179)"

        # resolve needs a note; the note is then shown with the run
        run_row(page, other["run_id"]).click()
        expect(detail.get_by_test_id("run-id")).to_have_text(other["run_id"])
        resolve = detail.locator('button[data-run-action="resolve"]')
        resolve.click()
        expect(detail.get_by_test_id("run-action-outcome")).to_contain_text("needs a note")
        assert json.loads(daemon.ctl("saga", "status", other["run_id"], "--json",
                                     check=True).stdout)["resolution"] == ""
        note = "refunded by hand, ticket <42>"
        detail.get_by_test_id("run-note").fill(note)
        detail.locator('button[data-run-action="resolve"]').click()
        expect(detail.get_by_test_id("run-resolution")).to_contain_text(note)
        expect(detail.get_by_test_id("run-status")).to_have_text("compensation_failed")
        expect(run_row(page, other["run_id"])).to_have_attribute("data-resolved", "true")
        assert json.loads(daemon.ctl("saga", "status", other["run_id"], "--json",
                                     check=True).stdout)["resolution"] == note
        expect(detail.locator("button[data-run-action]")).to_have_count(0)
        page.screenshot(path=str(tmp_path / "run-actions.png"), full_page=True)


def shows(page: Page, expected: list[str]) -> None:
    """Wait until the runs table lists exactly these run ids."""
    page.wait_for_function("ids => JSON.stringify([...document.querySelectorAll("
                           "'[data-testid=\"runs-table\"] tr[data-run]')]"
                           ".map(r => r.dataset.run).sort()) === JSON.stringify(ids)",
                           arg=sorted(expected))


@pytest.mark.timeout(240)
def test_runs_filter_by_status_name_kind_and_since(daemon: Naosd, browser: Browser,
                                                   tmp_path: Path):
    make_sagas(daemon, tmp_path)
    failed, done = run_saga(daemon, "order"), run_saga(daemon, "refund")
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        both = [failed["run_id"], done["run_id"]]
        shows(page, both)
        status, name = page.get_by_test_id("runs-status"), page.get_by_test_id("runs-name")
        kind, since = page.get_by_test_id("runs-kind"), page.get_by_test_id("runs-since")
        error = page.get_by_test_id("runs-filter-error")

        status.select_option("completed")
        shows(page, [done["run_id"]])
        status.select_option("")
        name.select_option("order")
        shows(page, [failed["run_id"]])
        name.select_option("")
        kind.select_option("workflow")
        shows(page, [])
        expect(page.locator('[data-testid="runs-table"] tbody')).to_contain_text(
            "no run matches the filters")
        kind.select_option("saga")
        shows(page, both)

        since.fill("yesterday")
        since.press("Enter")
        expect(error).to_contain_text("since: 'yesterday' is neither a duration")
        shows(page, [])
        since.fill("2999-01-01T00:00:00Z")
        since.press("Enter")
        expect(error).to_have_text("")
        shows(page, [])
        since.fill("1h")
        since.press("Enter")
        shows(page, both)
        # the overview card counts every run, whatever the table's filters
        status.select_option("completed")
        shows(page, [done["run_id"]])
        expect(page.locator("#ov-runs-sub")).to_have_text("2 recent, 1 need attention")


def audited(daemon: Naosd, type_: str, run_id: str) -> dict:
    rows = json.loads(daemon.ctl("audit", "tail", "-n", "2000", "--json", check=True).stdout)
    (row,) = [r["detail"] for r in rows if r["type"] == type_ and r["detail"]["run_id"] == run_id]
    return row


@pytest.mark.timeout(240)
def test_pending_approvals_show_a_badge_and_are_decided_from_the_page(
        daemon: Naosd, browser: Browser, tmp_path: Path):
    daemon.ctl("create", "inventory", "--template", "echo", check=True)
    daemon.ctl("saga", "create", "order", check=True)
    daemon.ctl("saga", "add-step", "order", "reserve", "--agent", "inventory", check=True)
    daemon.ctl("saga", "add-step", "order", "approve", "--approval", "--timeout", "3600",
               check=True)
    daemon.ctl("saga", "add-step", "order", "ship", "--agent", "inventory", check=True)
    yes, no, stop = (run_saga(daemon, "order") for _ in range(3))
    assert {r["status"] for r in (yes, no, stop)} == {"awaiting_approval"}
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.locator("#ov-runs-sub")).to_contain_text("3 awaiting approval")
        for run in (yes, no, stop):
            expect(run_row(page, run["run_id"]).get_by_test_id("approval-badge")) \
                .to_have_text("awaiting approval: approve")
        page.get_by_test_id("runs-status").select_option("awaiting_approval")
        shows(page, [yes["run_id"], no["run_id"], stop["run_id"]])

        # approve, with a note: the run goes on and completes
        run_row(page, yes["run_id"]).click()
        detail = page.get_by_test_id("run-detail")
        expect(detail.get_by_test_id("run-awaiting")).to_contain_text("step approve, until")
        actions = detail.get_by_test_id("run-actions")
        for verb in ("retry_compensation", "resolve"):
            expect(actions.locator(f'button[data-run-action="{verb}"]')).to_have_count(0)
        expect(detail.locator('g[data-step="approve"][data-phase="approval"]')) \
            .to_have_attribute("data-status", "awaiting_approval")
        detail.get_by_test_id("run-note").fill("stock checked")
        actions.locator('button[data-run-action="approve"]').click()
        expect(detail.get_by_test_id("run-action-outcome")).to_have_attribute("data-ok", "true")
        expect(detail.get_by_test_id("run-status")).to_have_text("completed")
        expect(detail.locator('g[data-step="approve"][data-phase="approval"]')) \
            .to_have_attribute("data-status", "approved")
        expect(detail.get_by_test_id("run-awaiting")).to_have_count(0)
        approved = audited(daemon, "saga.approved", yes["run_id"])
        assert (approved["by"], approved["note"]) == ("dashboard", "stock checked")

        # reject asks first, then the run is rolled back
        run_row(page, no["run_id"]).click()
        expect(detail.get_by_test_id("run-id")).to_have_text(no["run_id"])
        page.once("dialog", lambda dialog: dialog.accept())
        detail.locator('button[data-run-action="reject"]').click()
        expect(detail.get_by_test_id("run-status")).to_have_text("compensated")
        assert audited(daemon, "saga.rejected", no["run_id"])["by"] == "dashboard"

        # cancel
        run_row(page, stop["run_id"]).click()
        expect(detail.get_by_test_id("run-id")).to_have_text(stop["run_id"])
        page.once("dialog", lambda dialog: dialog.accept())
        detail.locator('button[data-run-action="cancel"]').click()
        expect(detail.get_by_test_id("run-status")).to_have_text("cancelled")
        expect(detail.locator("button[data-run-action]")).to_have_count(0)
        assert audited(daemon, "saga.cancelled", stop["run_id"])["by"] == "dashboard"
        shows(page, [])  # nothing awaits approval any more
        expect(page.locator("#ov-runs-sub")).not_to_contain_text("awaiting approval")
        page.screenshot(path=str(tmp_path / "approvals.png"), full_page=True)


@pytest.mark.timeout(240)
def test_pool_chips_drained_mark_and_fan_outs_counted(daemon: Naosd, browser: Browser,
                                                      tmp_path: Path):
    for name in ("left", "right"):
        daemon.ctl("create", name, "--template", "echo", check=True)
    daemon.ctl("pool", "create", "pair", "--agents", "left,right", check=True)
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        pool = page.locator('[data-testid="pools-table"] tr[data-pool="pair"]')
        chips = pool.locator("span.chip[data-member]")
        expect(chips).to_have_count(2)
        for member in ("left", "right"):
            expect(pool.locator(f'[data-member="{member}"]')).to_have_attribute(
                "data-state", "running")
        expect(pool.locator('td[data-col="done"]')).to_have_text("0")
        for i in range(2):  # fan-outs: each is one task, done by every member
            out = json.loads(daemon.ctl("pool", "run", "pair", "--input", str(i), "--json",
                                        check=True).stdout)
            assert out["status"] == "completed", out
        expect(pool.locator('td[data-col="done"]')).to_have_text("2")
        assert "2 fan-out(s)" in pool.locator('td[data-col="done"]').get_attribute("title")

        daemon.ctl("stop", "right", check=True)
        right = pool.locator('[data-member="right"]')
        expect(right).to_have_attribute("data-state", "stopped")
        colours = chips.evaluate_all("cs => cs.map(c => getComputedStyle(c).backgroundColor)")
        assert colours == ["rgb(23, 128, 61)", "rgb(122, 131, 148)"], colours  # green, grey

        expect(pool.get_by_test_id("pool-drained")).to_have_count(0)
        daemon.ctl("pool", "drain", "pair", check=True)
        expect(pool.get_by_test_id("pool-drained")).to_be_visible()
        expect(pool).to_have_attribute("data-drained", "true")
        page.screenshot(path=str(tmp_path / "pools.png"), full_page=True)
