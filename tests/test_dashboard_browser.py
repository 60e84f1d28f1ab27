"""The dashboard page in a real headless Chromium (Playwright driving the
Debian ``chromium`` binary), against the real daemon: login cookie, live
updates over Server-Sent Events, filtering, sorting, audit search, and no
data without the token."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Naosd
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 20_000
HOSTILE = "<img src=x onerror=window.__pwned=1></pre><b>x</b>"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} missing (apt-get install chromium chromium-driver)"),
]

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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def dashboard(d: Naosd) -> tuple[str, str]:
    info = json.loads(d.ctl("dashboard", "--json", check=True).stdout)
    return info["url"], info["login_url"]


def row(page: Page, name: str):
    return page.locator(f'[data-testid="agents-table"] tbody tr[data-agent="{name}"]')


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
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = page.goto(login_url)
        assert response is not None and response.ok
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
        assert "crashed" in seen["row"] and seen["row"][-1] == "running", seen
        assert "crashed" in seen["node"] and seen["node"][-1] == "running", seen
        expect(page.get_by_test_id("ov-restarts")).to_have_text("1")
        expect(page.locator('[data-testid="audit-table"] tr[data-type="agent.crashed"]')) \
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
        assert not errors, errors
    finally:
        context.close()


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


def test_cost_section_follows_spending_live(daemon: Naosd, browser: Browser):
    _, login_url = dashboard(daemon)
    daemon.ctl("cost", "set", "ann", "--budget", "$0.00001/day", check=True)
    daemon.ctl("axis", "register", "ann", "--t-score", "900", "--c-score", "950", check=True)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(login_url)
        budget = page.locator('[data-testid="budgets-table"] tr[data-scope="ann"]')
        expect(budget).to_contain_text("$0.00", timeout=TIMEOUT_MS)
        for _ in range(2):
            daemon.ctl("broker", "execute", "total: 1, 2", "--agent", "ann", check=True)
        expect(budget).to_contain_text("100.0%", timeout=TIMEOUT_MS)  # via the SSE stream
        expect(page.get_by_test_id("cost-stats")).to_contain_text("2 tasks (skill 2)",
                                                                   timeout=TIMEOUT_MS)
    finally:
        context.close()
