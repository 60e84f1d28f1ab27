"""/metrics through the real daemon: agents that run, crash, restart and
crash-loop, a broker task, a saga, a pool fan-out, a WASM run; then the
scrape (with the dashboard token) has the counts, passes ``promtool check
metrics`` and the naming rules, and a restarted naosd counts from zero."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Naosd, clean_env, reap, start_naosd
from orch_agents import Lab
from prometheus_client.parser import text_string_to_metric_families
from test_dashboard_api import get, login

pytestmark = pytest.mark.e2e

CRASH = "def handle(message, ctx):\n    raise RuntimeError('boom')\n"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def ok(d: Naosd, *args: str) -> dict:
    out = d.ctl(*args, "--json")
    assert out.returncode == 0, f"{args}: {out.stderr}\n{d.log()[-3000:]}"
    return json.loads(out.stdout) if out.stdout.strip() else {}


def scrape(d: Naosd) -> str:
    url, token = login(d)
    status, body, ctype = get(url + "metrics", token)
    assert status == 200 and ctype.startswith("text/plain"), (status, body[:300])
    return body.decode()


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def key(family: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return family, frozenset(labels.items())


def scrape_until(d: Naosd, want: Samples, timeout: float = 30.0) -> str:
    """The first scrape holding every wanted sample (rows written by the
    supervisors' processes land a moment after the call that caused them)."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(d)
        have = samples(text)
        missing = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
        if not missing:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted (value, scraped): {missing}\n{d.log()[-2000:]}")
        time.sleep(0.1)


def check_names(text: str) -> None:
    """What promtool's linter checks, for runs without it: families parse,
    one HELP and TYPE each, counters end in _total, naos times in _seconds."""
    helps = re.findall(r"^# HELP (\S+)", text, re.M)
    types = re.findall(r"^# TYPE (\S+) (\S+)", text, re.M)
    assert len(helps) == len(set(helps)) and len(types) == len({n for n, _ in types})
    for name, kind in types:
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram" and name.startswith("naos_"):
            assert name.endswith("_seconds"), name
    families = list(text_string_to_metric_families(text))
    assert {f.name for f in families} >= {"process_cpu_seconds", "naos_requests_served"}


def promtool() -> str | None:
    return shutil.which("promtool") or next(
        (str(p) for p in [Path(sys.executable).parent / "promtool"] if p.exists()), None)


def make_agents(d: Naosd, base: Path) -> None:
    crash = base / "crash.py"
    crash.write_text(CRASH)
    ok(d, "create", "echo", "--template", "echo")
    ok(d, "create", "member", "--template", "echo")
    ok(d, "create", "crashy", "--source", str(crash))
    ok(d, "supervisor", "create", "loop", "--max-restarts", "0", "--window", "60")
    ok(d, "create", "looper", "--source", str(crash), "--supervisor", "loop", "--no-start")
    ok(d, "supervisor", "start", "loop")
    deadline = time.monotonic() + 30
    while d.agent("looper")["state"] != "running":  # status exits 3 until it runs
        assert time.monotonic() < deadline, "looper did not start"
        time.sleep(0.05)


def exercise(d: Naosd, base: Path) -> int:
    """Everything the metrics count; returns the fuel the WASM run burned."""
    make_agents(d, base)
    for _ in range(2):
        assert ok(d, "run", "echo", "--input", '{"n": 1}')["output"] == {"n": 1}
    for name in ("crashy", "looper"):  # raise: crashed; crashy restarted, loop gives up
        assert d.ctl("run", name, "--input", "{}").returncode != 0
    ok(d, "broker", "execute", "sha256 of: x")
    assert d.ctl("broker", "execute", "nothing routes this").returncode != 0
    lab = Lab(base)
    ok(d, "create", "inv", "--source", str(lab.handler), *lab.grant, "--config", lab.config())
    ok(d, "saga", "create", "order")
    ok(d, "saga", "add-step", "order", "reserve", "--agent", "inv")
    assert ok(d, "saga", "run", "order", "--input", '{"a": 1}')["status"] == "completed"
    ok(d, "pool", "create", "fan", "--agents", "member")
    assert ok(d, "pool", "run", "fan", "--input", '"hi"')["status"] == "completed"
    wasm = Path(__file__).resolve().parent.parent / "examples" / "wasm" / "echo.wasm"
    return int(ok(d, "wasm", "run", str(wasm), "--input", "hi")["fuel_used"])


@pytest.fixture
def no_llm_daemon(base: Path) -> Iterator[Naosd]:
    """No LLM route (CI installs the embedded one): an unmatched task has no route."""
    d = start_naosd(base, env=clean_env(
        XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
        XDG_CONFIG_HOME=str(base / "xdg-config"), NAOS_LLM_LOCAL="false"))
    try:
        yield d
    finally:
        assert not reap(d), d.log()


def test_the_scrape_counts_what_happened_and_passes_promtool(no_llm_daemon: Naosd,
                                                             base: Path):
    daemon = no_llm_daemon
    fuel = exercise(daemon, base)
    want = {
        key("naos_agent_runs_total", agent="echo", outcome="ok"): 2,
        key("naos_agent_run_duration_seconds_count", agent="echo"): 2,
        key("naos_agent_runs_total", agent="crashy", outcome="agent_crashed"): 1,
        key("naos_child_crashes_total", kind="agent", name="crashy", supervisor="agents"): 1,
        key("naos_child_restarts_total", kind="agent", name="crashy", supervisor="agents"): 1,
        key("naos_child_crashes_total", kind="agent", name="looper", supervisor="loop"): 1,
        key("naos_crash_loops_total", supervisor="loop", child="looper"): 1,
        key("naos_child_restarts_total", kind="supervisor", name="loop", supervisor="root"): 1,
        key("naos_broker_tasks_total", route="skill", handler="sha256", outcome="ok"): 1,
        key("naos_broker_tasks_total", route="none", handler="none", outcome="no_route"): 1,
        key("naos_spend_micro_usd_total", agent="", route="skill"): 1,
        key("naos_trust_decisions_total", decision="allow", code="no_agent"): 1,
        key("naos_orchestration_runs_started_total", kind="saga", name="order"): 1,
        key("naos_orchestration_runs_finished_total", kind="saga", name="order",
            outcome="completed"): 1,
        key("naos_orchestration_steps_total", kind="saga", name="order", step="reserve",
            outcome="succeeded"): 1,
        key("naos_orchestration_step_duration_seconds_count", kind="saga", name="order",
            step="reserve"): 1,
        key("naos_agent_runs_total", agent="member", outcome="ok"): 1,
        key("naos_pool_fanouts_total", pool="fan", status="completed"): 1,
        key("naos_pool_fanout_duration_seconds_count", pool="fan"): 1,
        key("naos_pool_tasks", pool="fan", status="queued"): 0,
        key("naos_wasm_runs_total", outcome="ok"): 1,
        key("naos_wasm_fuel_total", source="run", skill=""): fuel,
    }
    text = scrape_until(daemon, want)
    have = samples(text)
    assert have[key("naos_requests_served_total")] > 10
    assert have[key("process_resident_memory_bytes")] > 0
    assert have[key("naos_metrics_audit_seq")] > 0
    check_names(text)
    tool = promtool()
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run unpacks it into .venv/bin")
        pytest.skip("promtool is not installed (.ci/run unpacks it into .venv/bin)")
    checked = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_restarted_naosd_counts_from_zero(base: Path):
    first = start_naosd(base)
    try:
        ok(first, "create", "echo", "--template", "echo")
        ok(first, "run", "echo", "--input", "1")
        scrape_until(first, {key("naos_agent_runs_total", agent="echo", outcome="ok"): 1})
        assert first.stop() == 0
    finally:
        reap(first)
    second = start_naosd(base)
    try:
        have = samples(scrape(second))
        assert have[key("naos_audit_head_seq")] > 5  # the old rows are there ...
        assert not [k for k in have if k[0] == "naos_agent_runs_total"]  # ... not counted
        ok(second, "run", "echo", "--input", "2")
        scrape_until(second, {key("naos_agent_runs_total", agent="echo", outcome="ok"): 1})
    finally:
        survivors = reap(second)
        assert not survivors, survivors
