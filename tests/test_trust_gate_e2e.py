"""The trust gate through the real daemon and naosctl, against a fake AXIS
server on 127.0.0.1: allow, deny (tier, score, rating, cap), AXIS down with
and without a fresh cache, fail-open, the offline local registry, and an
audit row for every decision."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fake_axis import FakeAxis, serve_fake_axis
from harness import Naosd, clean_env, reap, start_naosd

pytestmark = pytest.mark.e2e
KEY = "axis-secret-key-123"


@contextmanager
def naosd_with(base: Path, **env: str) -> Iterator[Naosd]:
    d = start_naosd(base, env=clean_env(XDG_RUNTIME_DIR=str(base),
                                        XDG_STATE_HOME=str(base / "xdg-state"),
                                        XDG_CONFIG_HOME=str(base / "xdg-config"), **env))
    try:
        yield d
    finally:
        survivors = reap(d)
        assert not survivors, f"processes outlived naosd: {survivors}\n{d.log()}"


def ok(d: Naosd, *args: str) -> dict:
    r = d.ctl(*args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def check(d: Naosd, agent: str, cost: str = "0"):
    return d.ctl("axis", "check", agent, "--cost", cost, "--json")


def decisions(d: Naosd) -> list[dict]:
    rows = json.loads(d.ctl("audit", "tail", "-n", "1000", "--json").stdout)
    return [r for r in rows if r["type"] in ("trust.allow", "trust.deny")]


@pytest.fixture
def axis() -> Iterator[FakeAxis]:
    with serve_fake_axis() as fake:
        yield fake


def test_allow_and_every_kind_of_deny_audited(base, axis):
    axis.agents.update({"auid-good": (850, 950), "auid-low": (150, 950),
                        "auid-mid": (450, 650), "auid-bb": (700, 300)})
    with naosd_with(base, NAOS_AXIS_BASE_URL=axis.url, NAOS_AXIS_API_KEY=KEY) as d:
        for agent, auid in [("good", "auid-good"), ("low", "auid-low"), ("mid", "auid-mid"),
                            ("bb", "auid-bb")]:
            ok(d, "axis", "register", agent, "--auid", auid)
        allowed = ok(d, "axis", "check", "good", "--cost", "5000")
        assert allowed["allow"] and allowed["tier"] == "T5" and allowed["rating"] == "AAA"
        ok(d, "axis", "policy", "set", "--min-tier", "T2")
        denied = check(d, "low")
        assert denied.returncode != 0 and "tier T1" in denied.stderr
        ok(d, "axis", "policy", "set", "--agent", "mid", "--min-t-score", "500")
        denied = check(d, "mid")
        assert denied.returncode != 0 and "below the required 500" in denied.stderr
        ok(d, "axis", "policy", "set", "--agent", "bb", "--min-rating", "A")
        denied = check(d, "bb")
        assert denied.returncode != 0 and "rates BB; policy requires A" in denied.stderr
        ok(d, "axis", "policy", "set", "--agent", "bb", "--reset")
        assert ok(d, "axis", "check", "bb", "--cost", "1")["allow"]  # BB: micro-payments
        denied = check(d, "bb", "1.01")
        assert denied.returncode != 0 and "per-task cap" in denied.stderr
        ok(d, "axis", "policy", "set", "--cap", "BB=2")
        assert ok(d, "axis", "check", "bb", "--cost", "1.01")["allow"]
        unregistered = check(d, "nobody")
        assert unregistered.returncode != 0 and "not registered" in unregistered.stderr
        rows = decisions(d)
        log = d.log()
    codes = [(r["agent"], r["type"], r["detail"]["code"]) for r in rows]
    assert codes == [
        ("good", "trust.allow", "ok"), ("low", "trust.deny", "below_min_tier"),
        ("mid", "trust.deny", "below_min_t_score"), ("bb", "trust.deny", "below_min_rating"),
        ("bb", "trust.allow", "ok"), ("bb", "trust.deny", "over_cap"),
        ("bb", "trust.allow", "ok"), ("nobody", "trust.deny", "unregistered")]
    assert all(r["detail"]["reason"] for r in rows)
    assert rows[5]["detail"]["cost_micro"] == 1_010_000
    assert all(h.get("X-AXIS-API-Key") == KEY for _, h in axis.requests)
    assert KEY not in log and all(KEY not in json.dumps(r) for r in rows)


def test_axis_down_fresh_cache_allows_then_no_cache_fails_closed(base, axis):
    axis.agents["auid-r"] = (650, 800)
    with naosd_with(base, NAOS_AXIS_BASE_URL=axis.url, NAOS_AXIS_CACHE_TTL="3600") as d:
        ok(d, "axis", "register", "researcher", "--auid", "auid-r")
        first = ok(d, "axis", "check", "researcher")
        assert first["allow"]
        asked = len(axis.requests)
        axis.stop()
        cached = ok(d, "axis", "check", "researcher")
        assert cached["allow"] and len(axis.requests) == asked  # served from the cache
        cache = ok(d, "axis", "cache")
        assert [e["auid"] for e in cache["entries"]] == ["auid-r"] and cache["entries"][0]["fresh"]
        assert ok(d, "axis", "cache", "--clear")["cleared"] == 1
        denied = check(d, "researcher")
        assert denied.returncode != 0 and "fail-closed" in denied.stderr
        status = ok(d, "axis", "status", "researcher")
        verify = d.ctl("axis", "verify", "auid-r", "--json")
        rows = decisions(d)
    assert [r["detail"].get("source") for r in rows] == ["axis", "cache", None]
    assert rows[-1]["detail"]["code"] == "no_record"
    assert "cannot reach AXIS" in rows[-1]["detail"]["axis_error"]
    assert status["record"] is None and not status["preview"]["allow"]
    assert verify.returncode == 1 and "cannot reach AXIS" in json.loads(verify.stdout)["axis_error"]


def test_axis_down_stale_cache_denied_unless_fail_open(base, axis):
    axis.agents["auid-s"] = (650, 800)
    with naosd_with(base, NAOS_AXIS_BASE_URL=axis.url, NAOS_AXIS_CACHE_TTL="0") as d:
        ok(d, "axis", "register", "slow", "--auid", "auid-s")
        assert ok(d, "axis", "verify", "auid-s")["record"]["source"] == "axis"
        axis.stop()
        denied = check(d, "slow")
        assert denied.returncode != 0 and "s old (max 0s)" in denied.stderr
        assert "fail-closed" in denied.stderr
        assert decisions(d)[-1]["detail"]["code"] == "stale_record"


def test_fail_open_allows_when_axis_down_and_nothing_cached(base, axis):
    url = axis.url
    axis.stop()
    with naosd_with(base, NAOS_AXIS_BASE_URL=url, NAOS_AXIS_FAIL_OPEN="true") as d:
        ok(d, "axis", "register", "free", "--auid", "auid-f")
        allowed = ok(d, "axis", "check", "free", "--cost", "12")
        assert allowed["allow"] and allowed["code"] == "fail_open"
        assert ok(d, "axis", "policy", "show")["fail_open"] is True
        assert decisions(d)[-1]["type"] == "trust.allow"


def test_local_registry_works_offline(base):
    with naosd_with(base) as d:  # no axis.base_url at all
        reg = ok(d, "axis", "register", "offline", "--t-score", "420", "--c-score", "610")
        assert reg["auid"] == "local:offline" and reg["local_only"]
        allowed = ok(d, "axis", "check", "offline", "--cost", "9999")
        assert (allowed["tier"], allowed["rating"]) == ("T3", "A")
        over = check(d, "offline", "10000.01")
        assert over.returncode != 0 and "$10,000.00 per-task cap" in over.stderr
        ok(d, "axis", "register", "bare")
        bare = check(d, "bare")
        assert bare.returncode != 0 and "without scores" in bare.stderr
        status = ok(d, "axis", "status", "offline")
        text = d.ctl("axis", "status", "offline").stdout
        rows = decisions(d)
    assert status["record"]["source"] == "local" and status["preview"]["allow"]
    assert "T3 (established)" in text
    assert [r["type"] for r in rows] == ["trust.allow", "trust.deny", "trust.deny"]


def test_bad_input_is_refused_with_a_clear_error(base):
    with naosd_with(base) as d:
        r = d.ctl("axis", "register", "x1", "--t-score", "5")
        assert r.returncode == 2 and "--c-score" in r.stderr
        r = d.ctl("axis", "register", "Bad Name", "--t-score", "5", "--c-score", "5")
        assert r.returncode == 2 and "agent" in r.stderr
        r = d.ctl("axis", "register", "x2", "--auid", "no spaces allowed")
        assert r.returncode == 2 and "invalid AUID" in r.stderr
        r = d.ctl("axis", "policy", "set", "--cap", "ZZ=1")
        assert r.returncode == 2 and "RATING=DOLLARS" in r.stderr
        r = d.ctl("axis", "check", "x1", "--cost", "-1")
        assert r.returncode == 2 and "--cost" in r.stderr
        assert ok(d, "axis", "policy", "show")["global"]["min_tier"] == "T1"


def test_unknown_auid_and_axis_errors_deny(base, axis):
    with naosd_with(base, NAOS_AXIS_BASE_URL=axis.url) as d:
        ok(d, "axis", "register", "ghost", "--auid", "auid-nobody")
        unknown = check(d, "ghost")
        assert unknown.returncode != 0 and "knows no agent" in unknown.stderr
        axis.agents["auid-e"] = (900, 900)
        ok(d, "axis", "register", "err", "--auid", "auid-e")
        axis.fail_with = 500
        broken = check(d, "err")
        assert broken.returncode != 0 and "fail-closed" in broken.stderr
        verify = d.ctl("axis", "verify", "local:err", "--json")
        rows = decisions(d)
    assert [r["detail"]["code"] for r in rows] == ["unknown_auid", "no_record"]
    assert "answered 500" in rows[1]["detail"]["axis_error"]
    assert "local-only" in json.loads(verify.stdout)["axis_error"]
    assert not any("local:err" in path for path, _ in axis.requests)


def test_concurrent_checks_ask_axis_once(base, axis):
    from concurrent.futures import ThreadPoolExecutor

    from naosctl.client import Client

    axis.agents["auid-c"] = (700, 700)
    axis.delay_s = 0.5  # every check overlaps the first one's AXIS request

    def one(_: int) -> bool:
        with Client(d.socket, timeout=30) as c:
            return bool(c.call("trust.check", agent="busy", cost_micro=5)["allow"])

    with naosd_with(base, NAOS_AXIS_BASE_URL=axis.url) as d:
        ok(d, "axis", "register", "busy", "--auid", "auid-c")
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        rows = decisions(d)
    assert results == [True] * 8
    assert len(axis.requests) == 1
    assert len(rows) == 8 and sorted(r["detail"]["source"] for r in rows) == \
        ["axis"] + ["cache"] * 7


def test_slow_axis_times_out_and_fails_closed(base, axis):
    axis.agents["auid-t"] = (900, 900)
    axis.delay_s = 1.5
    with naosd_with(base, NAOS_AXIS_BASE_URL=axis.url, NAOS_AXIS_TIMEOUT="0.2") as d:
        ok(d, "axis", "register", "late", "--auid", "auid-t")
        denied = check(d, "late")
        rows = decisions(d)
    assert denied.returncode != 0 and "fail-closed" in denied.stderr
    assert "did not answer within 0.2s" in rows[-1]["detail"]["axis_error"]
