"""The dashboard's overview, tree and agents table in a real headless
Chromium against the real daemon (issue 16): the tree's root in view, a
legend for every state, restart badges clear of the labels, a table that
fits its panel, kill behind a confirmation, a broken audit chain as a red
alert, and one format for every time and every amount of money."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from dash_browser import browser, dashboard, needs_chromium, opened, row
from harness import Naosd
from playwright.sync_api import Browser, Page, expect

pytestmark = [pytest.mark.e2e, needs_chromium]
__all__ = ["browser"]

LONG = "m" * 40  # wide letters: the longest label a box can be asked to hold

# The rectangles of a tree node's parts, in page coordinates.
NODE_BOXES_JS = """name => {
  const g = document.querySelector(`[data-testid="tree"] g[data-node="${name}"]`);
  const box = e => { const r = e.getBoundingClientRect();
                     return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  return {badge: box(g.querySelector("g[data-badge]")),
          name: box(g.querySelector('text[data-label="name"]')),
          sub: box(g.querySelector('text[data-label="sub"]')),
          node: box(g.querySelector("rect.box")),
          text: g.querySelector('text[data-label="name"]').textContent};
}"""


def overlap(a: dict, b: dict) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and \
        a["top"] < b["bottom"] and b["top"] < a["bottom"]


def inside(inner: dict, outer: dict) -> bool:
    return inner["left"] >= outer["left"] - 0.5 and inner["right"] <= outer["right"] + 0.5 \
        and inner["top"] >= outer["top"] - 0.5 and inner["bottom"] <= outer["bottom"] + 0.5


def rect(page: Page, selector: str) -> dict:
    return page.eval_on_selector(selector, """e => { const r = e.getBoundingClientRect();
        return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }""")


@pytest.mark.timeout(300)
def test_tree_root_in_view_legend_complete_and_badges_clear_of_labels(
        daemon: Naosd, browser: Browser, tmp_path: Path):
    # enough agents that a root drawn beside the middle of its subtree is out of view
    names = [f"worker-{i:02d}" for i in range(40)] + [LONG]
    for name in names:
        daemon.ctl("create", name, "--template", "echo", check=True)
    daemon.ctl("kill", LONG, check=True)  # one restart: a badge on the longest label
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        node = page.locator(f'[data-testid="tree"] g[data-node="{LONG}"]')
        expect(node).to_have_attribute("data-restarts", "1")
        expect(node).to_have_attribute("data-state", "running")
        expect(page.locator('[data-testid="tree"] g[data-node^="worker-"]')).to_have_count(40)

        # the root: at the top left of the tree's scroll box and in the window
        root = rect(page, '[data-testid="tree"] g[data-root="true"]')
        assert inside(root, rect(page, "#tree .scroll")), root
        assert inside(root, {"left": 0, "top": 0, "right": 1400, "bottom": 1100}), root

        # the legend names every state a node can show, each in its nodes' colour
        legend = page.eval_on_selector_all("#legend [data-legend-state]", """spans =>
            Object.fromEntries(spans.map(s => [s.dataset.legendState,
                getComputedStyle(s.querySelector("i")).backgroundColor]))""")
        assert {"running", "restarting", "crashed", "stopped", "failed", "paused"} <= set(legend)
        strokes = page.eval_on_selector_all('[data-testid="tree"] g[data-node]', """gs =>
            gs.map(g => [g.dataset.state, getComputedStyle(g.querySelector("rect.box")).stroke])""")
        for state, stroke in strokes:
            assert legend.get(state) == stroke, (state, stroke, legend)

        # the restart badge covers neither the name nor the second line
        boxes = page.evaluate(NODE_BOXES_JS, LONG)
        assert not overlap(boxes["badge"], boxes["name"]), boxes
        assert not overlap(boxes["badge"], boxes["sub"]), boxes
        assert inside(boxes["badge"], boxes["node"]) and inside(boxes["name"], boxes["node"])
        assert boxes["text"].endswith("…") and LONG.startswith(boxes["text"][:-1])
        assert node.locator("title").text_content().startswith(LONG)  # full name on hover
        page.locator("#tree").screenshot(path=str(tmp_path / "tree.png"))
        node.screenshot(path=str(tmp_path / "badge.png"))


CRASH = """
def handle(message, ctx):
    raise RuntimeError("the warehouse answered: " + "no stock left; " * 30)
"""


def test_agents_table_fits_its_panel_and_kill_asks_then_tells(daemon: Naosd, browser: Browser,
                                                             tmp_path: Path):
    (tmp_path / "crash.py").write_text(CRASH)
    daemon.ctl("create", "crasher", "--source", str(tmp_path / "crash.py"), check=True)
    daemon.ctl("create", "x" * 60, "--template", "echo", check=True)
    daemon.ctl("create", "victim", "--template", "echo", check=True)
    assert daemon.ctl("run", "crasher", "--input", "1").returncode != 0
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.get_by_test_id("chain-alert")).to_be_hidden()  # the chain is intact
        expect(row(page, "crasher").locator('td[data-col="last_error"]')) \
            .to_contain_text("no stock left")
        for width in (1400, 1000, 760):  # two panels a row, then one
            page.set_viewport_size({"width": width, "height": 1000})
            fits = page.eval_on_selector("#agents .scroll", """box => {
                const r = box.getBoundingClientRect();
                const cols = [...box.querySelectorAll("th")].map(th => th.getBoundingClientRect());
                return {scroll: box.scrollWidth, client: box.clientWidth,
                        hidden: cols.filter(c => c.right > r.right + 0.5 || c.width < 8).length};
            }""")
            assert fits["scroll"] <= fits["client"] and fits["hidden"] == 0, (width, fits)
        last_error = row(page, "crasher").locator('td[data-col="last_error"]')
        assert "no stock left" in last_error.get_attribute("title")  # the whole text on hover
        page.set_viewport_size({"width": 1400, "height": 1100})

        pid = json.loads(daemon.ctl("status", "victim", "--json", check=True).stdout)["pid"]
        row(page, "victim").click()
        expect(page.get_by_test_id("detail-name")).to_have_text("victim")
        outcome = page.get_by_test_id("action-outcome")
        kill = page.locator('#detail button[data-action="kill"]')
        asked: list[str] = []

        def answer(dialog, accept: bool) -> None:
            asked.append(f"{dialog.type}: {dialog.message}")
            dialog.accept() if accept else dialog.dismiss()

        page.once("dialog", lambda dialog: answer(dialog, False))
        kill.click()
        expect(outcome).to_have_text("kill cancelled")
        expect(outcome).to_have_attribute("data-ok", "false")
        assert asked and asked[0].startswith("confirm: Kill agent victim") and str(pid) in asked[0]
        killed = daemon.ctl("audit", "tail", "--type", "agent.killed", "--json", check=True)
        assert json.loads(killed.stdout) == []  # a dismissed dialog did nothing

        page.once("dialog", lambda dialog: answer(dialog, True))
        kill.click()
        expect(outcome).to_contain_text(f"killed victim (pid {pid})")
        expect(outcome).to_have_attribute("data-ok", "true")
        expect(row(page, "victim")).to_have_attribute("data-restarts", "1")
        expect(row(page, "victim")).to_have_attribute("data-state", "running")
        page.screenshot(path=str(tmp_path / "agents.png"), full_page=True)


def test_a_broken_audit_chain_is_a_red_alert_at_the_top(daemon: Naosd, browser: Browser,
                                                       tmp_path: Path):
    daemon.ctl("create", "witness", "--template", "echo", check=True)
    with sqlite3.connect(daemon.state_dir / "naos.db", timeout=30) as db:
        db.execute("UPDATE audit SET detail = '{\"forged\":true}' WHERE seq = 2")
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        alert = page.get_by_test_id("chain-alert")
        expect(alert).to_be_visible()
        expect(alert).to_contain_text("Audit chain BROKEN at #2")
        expect(alert).to_have_attribute("role", "alert")
        style = alert.evaluate("""e => { const s = getComputedStyle(e);
            return {bg: s.backgroundColor, fg: s.color, weight: s.fontWeight}; }""")
        assert style == {"bg": "rgb(179, 38, 30)", "fg": "rgb(255, 255, 255)", "weight": "600"}
        box = alert.bounding_box()
        assert box is not None and box["y"] < 120 and box["width"] > 1000  # above all, full width
        card = page.get_by_test_id("ov-chain-card")
        expect(card).to_have_attribute("data-ok", "false")
        assert card.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(179, 38, 30)"
        expect(page.get_by_test_id("ov-verify")).to_have_attribute("data-ok", "false")
        page.screenshot(path=str(tmp_path / "broken-chain.png"), full_page=True)


NONE = "\u2013"  # what the page shows for no value (an en dash)
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
LOGGER = """
def handle(message, ctx):
    ctx.log("got", message)
    return message
"""


def test_every_time_in_one_format_and_money_in_one_rule(daemon: Naosd, browser: Browser,
                                                        tmp_path: Path):
    (tmp_path / "logger.py").write_text(LOGGER)
    daemon.ctl("create", "clerk", "--source", str(tmp_path / "logger.py"), check=True)
    daemon.ctl("run", "clerk", "--input", "1", check=True)
    daemon.ctl("cost", "set", "clerk", "--budget", "$12.35/day", check=True)
    daemon.ctl("axis", "register", "clerk", "--t-score", "900", "--c-score", "950", check=True)
    daemon.ctl("broker", "execute", "sha256 of: a", "--agent", "clerk", check=True)
    printed = daemon.ctl("audit", "tail", "-n", "1", "--type", "agent.created",
                         check=True).stdout  # "#SEQ   TS TYPE ..."
    seq, ts = printed.split()[:2]
    _, login_url = dashboard(daemon)
    with opened(browser, login_url) as (_, page, _):
        expect(page.locator('[data-testid="budgets"] [data-budget="clerk"]')) \
            .to_contain_text("$0.000001 / $12.35")
        expect(page.locator('[data-testid="logs-table"] tr[data-log]')).to_have_count(1)
        expect(page.locator('[data-testid="decisions-table"] tr[data-decision]')).to_have_count(1)
        row(page, "clerk").click()
        expect(page.get_by_test_id("detail-runs").locator("tr[data-ok]")).to_have_count(1)

        # the audit row's time is what naosctl printed for it, to the second
        audit_time = page.locator(f'[data-testid="audit-table"] tr[data-seq="{seq[1:]}"] td.ts')
        expect(audit_time).to_have_text(ts[:19] + "Z")
        times = page.eval_on_selector_all(".ts", "es => es.map(e => e.textContent)")
        assert len(times) >= 6
        assert all(TIME.match(t) or t == NONE for t in times), times
        shown = page.evaluate("document.body.innerText")
        assert not re.search(r"\d:\d\d:\d\d\.\d|\d\d:\d\d:\d\d(?!Z)|\b[AP]M\b", shown), \
            re.findall(r".{20}\d\d:\d\d:\d\d.{12}", shown)
        definition = page.get_by_test_id("detail-definition").text_content()
        assert re.search(r'"created_at": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"', definition), \
            definition

        # one money rule: exact below a cent, rounded to the cent above
        got = page.evaluate("""[0, 1, 1234, 1200, 9999, 10000, 12345678, 1234567890, -2500,
                                 null].map(fmtUsd)""")
        assert got == ["$0.00", "$0.000001", "$0.001234", "$0.0012", "$0.009999", "$0.01",
                       "$12.35", "$1,234.57", "-$0.0025", NONE]
        expect(row(page, "clerk").locator('td[data-col="cost"]')).to_have_text("$0.000001")
        expect(page.get_by_test_id("broker-spent")).to_contain_text("$0.000001")
        spend = page.locator('#cost-by-agent g[data-agent="clerk"] text.sub')
        expect(spend).to_have_text("$0.000001")  # and the whole amount is drawn in its chart
        drawn, chart = rect(page, '#cost-by-agent g[data-agent="clerk"] text.sub'), \
            rect(page, "#cost-by-agent")
        assert drawn["right"] <= chart["right"], (drawn, chart)
        page.screenshot(path=str(tmp_path / "formats.png"), full_page=True)
