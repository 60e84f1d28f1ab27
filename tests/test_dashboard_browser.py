"""The dashboard page in a real headless Chromium (Playwright driving the
Debian ``chromium`` binary), against the real daemon: login cookie, live
updates over Server-Sent Events, filtering, sorting, audit search, and no
data without the token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dash_browser import TIMEOUT_MS, browser, dashboard, needs_chromium, opened, row
from harness import Naosd
from playwright.sync_api import Browser, Page, expect

HOSTILE = "<img src=x onerror=window.__pwned=1></pre><b>x</b>"

pytestmark = [pytest.mark.e2e, needs_chromium]
__all__ = ["browser"]  # the fixture, shared with the other browser test modules

# Records every data-state the agent's row and tree node show, in order, so a
# crash that is repaired within milliseconds is still seen by the test.
WATCH_JS = """name => {
  window.__seen = {row: [], node: []};
  const note = () => {
    const row = document.querySelector(`tr[data-agent="${name}"]`);
    const node = document.querySelector(`g[data-node="${name}"]`);
    for (const [k, e] of [["row", row], ["node", node]]) {
      const s = e && e.getAttribute("data-state"), seen = window.__seen[k];
      if (s && seen[seen.length - 1] !== s) seen.push(s);
    }
  };
  new MutationObserver(note).observe(document.body,
    {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
  note();
}"""


def visible_agents(page: Page) -> list[str]:
    return page.eval_on_selector_all('[data-testid="agents-table"] tbody tr[data-agent]',
                                     "rows => rows.map(r => r.dataset.agent)")


def test_live_dashboard_follows_a_crash_and_filters_sorts_searches(
        daemon: Naosd, browser: Browser, tmp_path: Path):
    url, login_url = dashboard(daemon)
    daemon.ctl("create", "alpha", "--template", "echo", "--config", json.dumps(
        {"note": HOSTILE}), check=True)
    for name in ("beta", "gamma"):
        daemon.ctl("create", name, "--template", "echo", check=True)
    with opened(browser, login_url) as (context, page, _):
        assert page.url == url  # redirected: the token left the address bar
        cookie = next(c for c in context.cookies() if c["name"] == "naos_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        for name in ("alpha", "beta", "gamma"):
            expect(row(page, name)).to_have_attribute("data-state", "running")
            expect(page.locator(f'[data-testid="tree"] g[data-node="{name}"]')) \
                .to_have_attribute("data-state", "running")
        expect(page.get_by_test_id("ov-verify")).to_have_attribute("data-ok", "true")
        expect(page.get_by_test_id("live")).to_have_attribute("data-live", "open")
        page.screenshot(path=str(tmp_path / "1-loaded.png"), full_page=True)

        # a crash, live, without reloading
        page.evaluate(WATCH_JS, "beta")
        daemon.ctl("kill", "beta", check=True)
        beta = row(page, "beta")
        expect(beta).to_have_attribute("data-crashed", "recently")
        expect(beta).to_have_attribute("data-restarts", "1")
        expect(beta).to_have_attribute("data-state", "running")
        expect(beta.locator('td[data-col="restarts"]')).to_have_text("1")
        expect(beta.locator('td[data-col="last_error"]')).not_to_be_empty()
        node = page.locator('[data-testid="tree"] g[data-node="beta"]')
        expect(node).to_have_attribute("data-restarts", "1")
        expect(node).to_have_attribute("data-state", "running")
        seen = page.evaluate("window.__seen")
        assert "restarting" in seen["row"] and seen["row"][-1] == "running", seen
        assert "restarting" in seen["node"] and seen["node"][-1] == "running", seen
        expect(page.get_by_test_id("ov-restarts")).to_have_text("1")
        # one audit row per restart, carrying the crash's reason
        expect(page.locator('[data-testid="audit-table"] tr[data-type="agent.restarted"]')) \
            .to_have_count(1)
        page.screenshot(path=str(tmp_path / "2-after-crash.png"), full_page=True)

        # the search box filters the table
        page.get_by_test_id("agent-search").fill("alp")
        page.wait_for_function("""() => [...document.querySelectorAll(
            '[data-testid="agents-table"] tbody tr[data-agent]')].map(r => r.dataset.agent)
            .join() === 'alpha'""", timeout=TIMEOUT_MS)
        page.get_by_test_id("agent-search").fill("")
        expect(page.locator('[data-testid="agents-table"] tbody tr[data-agent]')) \
            .to_have_count(3)

        # sorting by restarts: most first, a second click reverses
        header = page.locator('[data-testid="agents-table"] th[data-sort="restarts"]')
        header.click()
        assert visible_agents(page)[0] == "beta"
        expect(header).to_have_attribute("aria-sort", "descending")
        header.click()
        assert visible_agents(page)[-1] == "beta"
        expect(header).to_have_attribute("aria-sort", "ascending")

        # a row opens the detail panel (definition + logs)
        beta.click()
        detail = page.get_by_test_id("agent-detail")
        expect(detail.get_by_test_id("detail-name")).to_have_text("beta")
        expect(detail.get_by_test_id("detail-definition")).to_contain_text('"source": "echo"')
        expect(detail.get_by_test_id("detail-logs")).to_be_visible()

        # user data is shown as text, never parsed as markup
        row(page, "alpha").click()
        expect(detail.get_by_test_id("detail-definition")).to_contain_text(HOSTILE)
        assert page.locator("#detail img").count() == 0
        assert page.evaluate("window.__pwned") is None

        # audit search
        page.get_by_test_id("audit-search").fill("gamma")
        page.get_by_test_id("audit-search").press("Enter")
        rows = page.locator('[data-testid="audit-table"] tbody tr[data-seq]')
        page.wait_for_function("""() => {
            const rows = [...document.querySelectorAll(
                '[data-testid="audit-table"] tbody tr[data-seq]')];
            return rows.length > 0 && rows.every(r => r.textContent.includes('gamma'));
        }""", timeout=TIMEOUT_MS)
        assert rows.count() >= 2  # agent.created + agent.started at least
        expect(page.locator("#audit-mode")).to_contain_text("search")
        page.screenshot(path=str(tmp_path / "3-search.png"), full_page=True)


def test_without_the_token_the_page_gets_no_data(daemon: Naosd, browser: Browser,
                                                 tmp_path: Path):
    url, _ = dashboard(daemon)
    daemon.ctl("create", "secretive", "--template", "echo", check=True)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        response = page.goto(url)
        assert response is not None and response.status == 401
        assert "secretive" not in page.content()
        api = context.request.get(url + "api/v1/agents")
        assert api.status == 401 and "secretive" not in api.text()
        assert context.request.get(url + "api/v1/events").status == 401
        wrong = context.request.get(url + "?token=not-the-token", max_redirects=0)
        assert wrong.status == 403
        assert not [c for c in context.cookies() if c["name"] == "naos_session"]
        page.screenshot(path=str(tmp_path / "denied.png"))
    finally:
        context.close()


LOGGER = """
def handle(message, ctx):
    ctx.log("handled", message)
    return message
"""


def test_logs_runs_and_counts_arrive_live(daemon: Naosd, browser: Browser, tmp_path: Path):
    handler = tmp_path / "logger.py"
    handler.write_text(LOGGER)
    daemon.ctl("create", "chatty", "--source", str(handler), check=True)
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.get_by_test_id("live")).to_have_attribute("data-live", "open")
        expect(row(page, "chatty").locator('td[data-col="messages"]')).to_have_text("0")
        daemon.ctl("run", "chatty", "--input", '"hello-live"', check=True)
        logs = page.locator('[data-testid="logs-table"] tbody tr[data-log]')
        expect(logs.first).to_contain_text("hello-live")
        expect(logs.first).to_contain_text("chatty")
        expect(row(page, "chatty").locator('td[data-col="messages"]')).to_have_text("1")
        row(page, "chatty").click()
        runs = page.get_by_test_id("detail-runs").locator("tr[data-ok]")
        expect(runs).to_have_count(1)
        expect(runs.first).to_have_attribute("data-ok", "true")
        # actions from the detail panel (same origin + CSRF header, sent by the page)
        page.locator('#detail button[data-action="stop"]').click()
        expect(row(page, "chatty")).to_have_attribute("data-state", "stopped")
        page.once("dialog", lambda dialog: dialog.accept())  # kill asks first
        page.locator('#detail button[data-action="kill"]').click()
        expect(page.get_by_test_id("action-outcome")).to_contain_text("not running")
        expect(page.get_by_test_id("action-outcome")).to_have_attribute("data-ok", "false")
        page.locator('#detail button[data-action="start"]').click()
        expect(row(page, "chatty")).to_have_attribute("data-state", "running")
        # the log filter narrows the live tail
        page.get_by_test_id("log-search").fill("no-such-text")
        expect(logs).to_have_count(0)
        page.get_by_test_id("log-search").fill("hello")
        expect(logs).to_have_count(1)
        page.screenshot(path=str(tmp_path / "logs.png"), full_page=True)


DECLINE = """
def handle(message, ctx):
    raise RuntimeError("card declined")
"""


def test_a_saga_run_appears_live_with_its_step_timeline(daemon: Naosd, browser: Browser,
                                                         tmp_path: Path):
    (tmp_path / "decline.py").write_text(DECLINE)
    for name in ("inventory", "inventory-release"):
        daemon.ctl("create", name, "--template", "echo", check=True)
    daemon.ctl("create", "payment", "--source", str(tmp_path / "decline.py"), check=True)
    daemon.ctl("saga", "create", "order", check=True)
    daemon.ctl("saga", "add-step", "order", "reserve", "--agent", "inventory",
               "--compensate", "inventory-release", check=True)
    daemon.ctl("saga", "add-step", "order", "charge", "--agent", "payment", check=True)
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.get_by_test_id("live")).to_have_attribute("data-live", "open")
        expect(page.get_by_test_id("runs-section")).to_be_visible()
        expect(page.locator('[data-testid="runs-table"] tr[data-run]')).to_have_count(0)
        run = json.loads(daemon.ctl("saga", "run", "order", "--input", '{"order": 7}',
                                    "--json").stdout)
        assert run["status"] == "compensated", run
        line = page.locator(f'[data-testid="runs-table"] tr[data-run="{run["run_id"]}"]')
        expect(line).to_have_attribute("data-status", "compensated")  # arrived live
        expect(page.get_by_test_id("ov-runs")).to_have_text("0")
        line.click()
        detail = page.get_by_test_id("run-detail")
        expect(detail.get_by_test_id("run-status")).to_have_text("compensated")
        tl = detail.get_by_test_id("timeline")
        expect(tl.locator('g[data-step="reserve"][data-phase="forward"]')) \
            .to_have_attribute("data-status", "completed")
        expect(tl.locator('g[data-step="charge"][data-phase="forward"]')) \
            .to_have_attribute("data-status", "failed")
        expect(tl.locator('g[data-step="reserve"][data-phase="compensate"]')) \
            .to_have_attribute("data-status", "compensated")
        assert tl.locator("g[data-step] rect").count() == 3  # one bar per segment
        expect(detail.get_by_test_id("run-input")).to_contain_text('"order": 7')
        expect(detail.get_by_test_id("run-outputs")).to_contain_text("reserve")
        page.screenshot(path=str(tmp_path / "saga-timeline.png"), full_page=True)
        # a pool appears, and its queue-mode work shows up without a reload
        daemon.ctl("pool", "create", "pair", "--agents", "inventory,inventory-release",
                   check=True)
        pool = page.locator('[data-testid="pools-table"] tr[data-pool="pair"]')
        expect(pool).to_contain_text("inventory-release")
        for i in range(3):
            daemon.ctl("pool", "submit", "pair", "--input", str(i), check=True)
        expect(pool.locator('td[data-col="done"]')).to_have_text("3")


def test_cost_broker_and_trust_views_follow_spending_live(daemon: Naosd, browser: Browser,
                                                          tmp_path: Path):
    daemon.ctl("cost", "set", "ann", "--budget", "$0.000002/day", "--alert-at", "50",
               check=True)
    daemon.ctl("axis", "register", "ann", "--t-score", "900", "--c-score", "950", check=True)
    daemon.ctl("axis", "register", "bob", "--t-score", "100", "--c-score", "100", check=True)
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.get_by_test_id("live")).to_have_attribute("data-live", "open")
        budget = page.locator('[data-testid="budgets"] [data-budget="ann"]')
        expect(budget).to_have_attribute("data-level", "ok")
        expect(page.locator('[data-testid="trust-table"] tr[data-trust="ann"]')) \
            .to_have_attribute("data-tier", "T5")
        daemon.ctl("broker", "execute", "sha256 of: a", "--agent", "ann", check=True)
        expect(budget).to_have_attribute("data-level", "amber")  # 1 of 2 micro-dollars
        daemon.ctl("broker", "execute", "sha256 of: b", "--agent", "ann", check=True)
        expect(budget).to_have_attribute("data-level", "red")
        expect(page.locator('[data-testid="cost-alerts"] tr[data-alert]').first).to_be_visible()
        expect(page.get_by_test_id("broker-total")).to_contain_text("2")
        decisions = page.locator('[data-testid="decisions-table"] tr[data-decision]')
        expect(decisions).to_have_count(2)
        expect(decisions.first).to_contain_text("sha256 of: b")  # the task and its scores
        expect(decisions.first).to_contain_text("sha256 0.9")
        expect(page.locator('#ov-mix rect[data-kind="skill"]')).to_have_count(1)
        assert daemon.ctl("broker", "execute", "sha256 of: c", "--agent", "bob").returncode
        expect(page.locator('[data-testid="denials-table"] tr[data-denial]')).to_have_count(1)
        expect(decisions).to_have_count(3)
        page.screenshot(path=str(tmp_path / "cost-broker-trust.png"), full_page=True)
