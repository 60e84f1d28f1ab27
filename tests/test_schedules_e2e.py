"""Schedules through the real daemon and naosctl (issue 16): a cron schedule
fires within its minute; firings survive SIGTERM and kill -9 of naosd with no
slot fired twice and none lost (catch-up), or collapsed into one (skip); an
agent firing cut short is sent again under its idempotency key.  The hidden
``--every SECONDS`` (a documented testing aid) keeps these tests short."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import restart
from harness import Naosd, wait_for
from orch_agents import Lab, read_rows
from test_saga_crash import kill9
from test_saga_e2e import make_agents, make_saga, ok

pytestmark = pytest.mark.e2e
ME = f"uid:{os.getuid()}"

KEYS_AGENT = '''
import json, sqlite3, time

def _db(path):
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS calls(key TEXT, input TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS done(key TEXT)")
    return db

def handle(message, ctx):
    db = _db(ctx.config["db"])
    db.execute("INSERT INTO calls VALUES (?, ?)", (ctx.idempotency_key, json.dumps(message)))
    control = json.loads(open(ctx.config["control"]).read())
    time.sleep(control.get("sleep", 0))
    db.execute("INSERT INTO done VALUES (?)", (ctx.idempotency_key,))
    return {"got": message}
'''


def keys_agent(d: Naosd, base: Path, name: str = "pinger") -> Lab:
    lab = Lab(base)
    source = base / "keys_agent.py"
    source.write_text(KEYS_AGENT)
    ok(d, "create", name, "--source", str(source), *lab.grant, "--config", lab.config())
    return lab


def schedule(d: Naosd, name: str) -> dict:
    (row,) = [s for s in ok(d, "schedule", "list") if s["name"] == name]
    return row


def fired_slots(d: Naosd, name: str) -> list[float]:
    rows = [r["detail"] for r in ok(d, "audit", "tail", "-n", "100000")
            if r["type"] == "schedule.fired" and r["detail"]["schedule"] == name]
    return [datetime.fromisoformat(r["slot"].replace("Z", "+00:00")).timestamp() for r in rows]


def test_saga_firings_survive_sigterm_and_kill9_each_slot_once(base: Path,
                                                              daemons: list[Naosd]):
    lab, d = Lab(base), daemons[0]
    make_agents(d, lab)
    make_saga(d)
    added = ok(d, "schedule", "add", "tick", "--every", "2", "--saga", "order", "--input",
               '{"n": 1}', "--missed", "catch-up")
    assert added["every_s"] == 2 and added["fired"] == 0 and added["target"] == "order"
    wait_for(lambda: schedule(d, "tick")["fired"] >= 2, timeout=30)
    assert d.stop() == 0  # SIGTERM: what is due meanwhile fires at the next start
    time.sleep(5)  # two or three slots go by
    d = restart(daemons)
    before = len(fired_slots(d, "tick"))
    wait_for(lambda: len(fired_slots(d, "tick")) >= before + 3, timeout=30)
    kill9(d)  # right after a firing, or in the middle of one
    time.sleep(3)
    d = restart(daemons)
    count = schedule(d, "tick")["fired"]
    wait_for(lambda: schedule(d, "tick")["fired"] >= count + 2, timeout=30)
    removed = ok(d, "schedule", "remove", "tick")
    assert removed == {"removed": "tick"}

    slots = sorted(fired_slots(d, "tick"))
    assert len(slots) == len(set(slots)), "a slot fired twice"
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert gaps == [2.0] * len(gaps), f"a slot was lost: {gaps}"  # caught up, none lost
    runs = ok(d, "saga", "runs", "--limit", "1000")
    fired = [r["detail"]["run"] for r in ok(d, "audit", "tail", "-n", "100000")
             if r["type"] == "schedule.fired"]
    assert sorted(fired) == sorted(r["run_id"] for r in runs)  # one run per firing
    assert all(r["input"] == {"n": 1} for r in runs)
    wait_for(lambda: all(r["status"] == "completed"
                         for r in ok(d, "saga", "runs", "--limit", "1000")), timeout=60)
    audits = ok(d, "audit", "tail", "-n", "100000")
    (add,) = [r["detail"] for r in audits if r["type"] == "schedule.added"]
    (rm,) = [r["detail"] for r in audits if r["type"] == "schedule.removed"]
    assert add["by"] == ME and rm["by"] == ME
    assert ok(d, "schedule", "list") == []


def test_skip_collapses_missed_slots_and_an_agent_gets_its_key(base: Path, daemons: list[Naosd]):
    d = daemons[0]
    lab = keys_agent(d, base)
    ok(d, "schedule", "add", "ping", "--every", "1", "--agent", "pinger", "--input",
       '{"hello": 1}')
    wait_for(lambda: schedule(d, "ping")["fired"] >= 1, timeout=30)
    assert d.stop() == 0
    time.sleep(4)
    d = restart(daemons)
    wait_for(lambda: [r for r in ok(d, "audit", "tail", "-n", "5000")
                      if r["type"] == "schedule.skipped"], timeout=30)
    ok(d, "schedule", "remove", "ping")
    skipped = [r["detail"] for r in ok(d, "audit", "tail", "-n", "5000")
               if r["type"] == "schedule.skipped"]
    assert skipped[0]["count"] >= 2 and skipped[0]["missed"] == "skip"
    slots = fired_slots(d, "ping")
    assert len(slots) == len(set(slots))
    wait_for(lambda: len(read_rows(lab.db, "SELECT key FROM done")) == len(slots))
    keys = [k for (k,) in read_rows(lab.db, "SELECT key FROM calls")]
    assert len(keys) == len(set(keys)) == len(slots)
    assert all(k.startswith("schedule:ping:") for k in keys)
    (got,) = {i for (i,) in read_rows(lab.db, "SELECT input FROM calls")}
    assert json.loads(str(got)) == {"hello": 1}
    view = ok(d, "schedule", "list")
    assert view == []


def test_an_agent_firing_cut_short_is_sent_again_under_its_key(base: Path, daemons: list[Naosd]):
    d = daemons[0]
    lab = keys_agent(d, base)
    lab.set(sleep=4)  # the agent is still at work when naosd is killed
    ok(d, "schedule", "add", "slow", "--every", "20", "--agent", "pinger")
    wait_for(lambda: read_rows(lab.db, "SELECT key FROM calls"), timeout=40)
    (key,), = read_rows(lab.db, "SELECT key FROM calls")
    assert schedule(d, "slow")["in_flight"] == 1
    kill9(d)
    lab.set()
    d = restart(daemons)
    wait_for(lambda: read_rows(lab.db, "SELECT key FROM done WHERE key = ?", (key,)),
             timeout=30)
    calls = [k for (k,) in read_rows(lab.db, "SELECT key FROM calls")]
    assert calls.count(key) == 2  # the same firing, the same key: the agent can dedupe
    resent = [r["detail"] for r in ok(d, "audit", "tail", "-n", "5000")
              if r["type"] == "schedule.resent"]
    assert resent[0]["key"] == key
    wait_for(lambda: schedule(d, "slow")["in_flight"] == 0)
    assert fired_slots(d, "slow").count(fired_slots(d, "slow")[0]) == 1


@pytest.mark.timeout(150)
def test_a_cron_schedule_fires_within_its_minute_and_a_restart_does_not_refire(
        base: Path, daemons: list[Naosd]):
    d = daemons[0]
    lab = keys_agent(d, base)
    added = ok(d, "schedule", "add", "minutely", "--cron", "* * * * *", "--agent",
               "pinger")
    assert added["cron"] == "* * * * *" and added["next_due"].endswith(":00.000000Z")
    wait_for(lambda: schedule(d, "minutely")["fired"] == 1, timeout=65)
    first = schedule(d, "minutely")
    assert first["last_slot"] == added["next_due"]
    slot = datetime.fromisoformat(first["last_slot"].replace("Z", "+00:00")).timestamp()
    assert datetime.fromisoformat(first["next_due"].replace("Z", "+00:00")).timestamp() \
        == slot + 60
    d.stop(signal.SIGTERM)
    d = restart(daemons)
    if time.time() < slot + 55:  # well before the next minute: nothing fires again
        time.sleep(2)
        assert schedule(d, "minutely")["fired"] == 1
        assert len(read_rows(lab.db, "SELECT key FROM calls")) == 1
    text = d.ctl("schedule", "list")
    assert text.returncode == 0 and "minutely  agent pinger  cron '* * * * *' (UTC)" \
        in text.stdout


def test_bad_schedules_are_refused_with_their_reason(daemon: Naosd, base: Path):
    keys_agent(daemon, base)
    assert daemon.ctl("schedule", "list").stdout.strip() == "no schedules"
    cases = [
        (["--cron", "*/5 * * *", "--agent", "pinger"], 2, "has 4 fields; it needs 5"),
        (["--cron", "0 25 * * *", "--agent", "pinger"], 2, "hour field: 25 is out of range"),
        (["--cron", "@hourly", "--agent", "pinger"], 2, "nicknames like @daily"),
        (["--cron", "* * * * *", "--saga", "nope"], 4, "no saga named 'nope'"),
        (["--cron", "* * * * *", "--agent", "ghost"], 4, "no agent named 'ghost'"),
        (["--cron", "* * * * *", "--agent", "pinger", "--saga", "x"], 2,
         "exactly one of --saga, --workflow, --agent"),
        (["--agent", "pinger"], 2, "give --cron EXPR"),
        (["--cron", "* * * * *", "--agent", "pinger", "--timeout", "0"], 2,
         "timeout must be more than 0"),
    ]
    for args, code, message in cases:
        out = daemon.ctl("schedule", "add", "s1", *args)
        assert out.returncode == code and message in out.stderr, (args, out)
    ok(daemon, "schedule", "add", "s1", "--cron", "0 9 * * mon-fri", "--agent", "pinger")
    dup = daemon.ctl("schedule", "add", "s1", "--cron", "* * * * *", "--agent", "pinger")
    assert dup.returncode == 1 and "already exists" in dup.stderr
    gone = daemon.ctl("schedule", "remove", "nope")
    assert gone.returncode == 4 and "no schedule named 'nope'" in gone.stderr
    (row,) = ok(daemon, "schedule", "list")
    assert row["cron"] == "0 9 * * mon-fri" and row["missed"] == "skip"
    assert datetime.fromisoformat(row["next_due"].replace("Z", "+00:00")).weekday() < 5
