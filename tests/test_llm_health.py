"""The local LLM server's life rules (naosd.broker.llm.health): pure, time as data."""

from __future__ import annotations

import pytest

from naosd.broker.llm import health as hl
from naosd.broker.llm.health import CrashPolicy, Health, Phase

POLICY = CrashPolicy(backoff_initial_s=1.0, backoff_max_s=5.0, max_crashes=4, window_s=100.0)


def crash(h: Health, now: float, how: str = "signal SIGSEGV") -> Health:
    return hl.exited(hl.start(h, now - 0.5), how, now, POLICY, asked=False)


def test_a_start_then_ready_then_asked_to_stop():
    h = hl.start(Health(), 10.0)
    assert (h.phase, h.starts, h.since) == (Phase.STARTING, 1, 10.0)
    h = hl.ready(h, 11.0)
    assert (h.phase, h.since) == (Phase.READY, 11.0)
    h = hl.exited(h, "signal SIGTERM", 12.0, POLICY, asked=True)
    assert (h.phase, h.crash_times, h.crashes_total) == (Phase.STOPPED, (), 0)
    assert hl.wait_s(h, 12.0) == 0


def test_crashes_back_off_doubling_up_to_the_cap_then_give_up():
    h, waits = Health(), []
    for now in (10.0, 20.0, 30.0):
        h = crash(h, now)
        assert h.phase is Phase.BACKOFF and h.last_exit == "signal SIGSEGV"
        waits.append(hl.wait_s(h, now))
    assert waits == [1.0, 2.0, 4.0]
    assert POLICY.backoff_s(4) == 5.0  # capped
    h = crash(h, 40.0)
    assert (h.phase, len(h.crash_times), h.crashes_total) == (Phase.CRASHED, 4, 4)
    assert hl.wait_s(h, 40.0) == 0  # no timer: it stays down until reset


def test_crashes_outside_the_window_are_forgotten():
    h = Health()
    for now in (0.0, 50.0, 99.0):
        h = crash(h, now)
    h = crash(h, 150.0)  # the crash at 0 and at 50 are older than 100 s
    assert h.phase is Phase.BACKOFF and h.crash_times == (99.0, 150.0)
    assert hl.wait_s(h, 150.0) == 2.0 and h.crashes_total == 4


def test_backoff_counts_down_and_reset_forgets_everything():
    h = crash(crash(Health(), 10.0), 20.0)
    assert hl.wait_s(h, 21.5) == 0.5 and hl.wait_s(h, 23.0) == 0
    h = hl.reset(crash(crash(h, 30.0), 40.0), 41.0)
    assert (h.phase, h.crash_times, h.retry_at) == (Phase.STOPPED, (), 0.0)
    assert h.crashes_total == 4 and h.last_exit == "signal SIGSEGV"


@pytest.mark.parametrize(("code", "text"), [
    (-11, "signal SIGSEGV"), (-9, "signal SIGKILL"), (0, "exit code 0"), (3, "exit code 3"),
    (-200, "signal 200")])
def test_exits_are_described(code, text):
    assert hl.describe_exit(code) == text


def test_status_view():
    h = hl.exited(hl.start(Health(), 1.0), "signal SIGSEGV", 2.0, POLICY, asked=False)
    view = hl.to_dict(h, 2.5, POLICY)
    assert view == {"state": "backoff", "in_state_s": 0.5, "starts": 1, "crashes": 1,
                    "crashes_total": 1, "max_crashes": 4, "window_s": 100.0,
                    "last_exit": "signal SIGSEGV", "retry_in_s": 0.5}
    assert hl.to_dict(h, 500.0, POLICY)["crashes"] == 0  # outside the window
