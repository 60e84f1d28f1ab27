"""Test agents for sagas and workflows, written as real handler files.

``LEDGER_AGENT`` applies a side effect once per idempotency key: it keeps a
``seen`` table (its dedup memory) and appends to ``ledger`` only for a key it
has not seen.  The ledger row names the run, the step and do/undo, so a
coordinator that re-sent a step under a NEW key would show up as two ledger
rows for the same (run, step, do/undo).  Behaviour is steered by the saga
input (``fail_at``: the step that fails with a business error) and by a
control file read on every call (``fail_undo``: steps whose compensation
fails; ``sleep``: seconds to sleep before applying, ``sleep_do``: the same for the
step only, not its compensation; ``sleep_after``: seconds
the step sleeps after applying, before answering; ``raise_at``).  A
compensation whose step never took effect (an in-doubt step that did not
reach the agent) has nothing to undo and applies nothing.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

LEDGER_AGENT = '''
import json, sqlite3, time

def _db(path):
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS seen(key TEXT PRIMARY KEY, output TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS ledger(id INTEGER PRIMARY KEY, run_id TEXT,"
               " step TEXT, undo INTEGER, key TEXT, agent TEXT, payload TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS calls(id INTEGER PRIMARY KEY, key TEXT, agent TEXT)")
    return db

def handle(message, ctx):
    cfg = ctx.config
    control = json.loads(open(cfg["control"]).read())
    undo = bool(cfg.get("undo"))
    step = message["step"]
    key = message["idempotency_key"]
    assert ctx.idempotency_key == key
    db = _db(cfg["db"])
    db.execute("INSERT INTO calls(key, agent) VALUES (?, ?)", (key, ctx.name))
    inp = message.get("input") or {}
    if not undo and isinstance(inp, dict) and inp.get("fail_at") == step:
        return {"error": {"code": "declined", "message": f"{step} declined"}}
    if undo and step in control.get("fail_undo", []):
        return {"error": {"code": "undo_broken", "message": f"cannot undo {step}"}}
    if not undo and step in control.get("raise_at", []):
        raise RuntimeError(f"{step} blew up")
    time.sleep(control.get("sleep", {}).get(step, 0))
    if not undo:
        time.sleep(control.get("sleep_do", {}).get(step, 0))
    db.execute("BEGIN IMMEDIATE")
    row = db.execute("SELECT output FROM seen WHERE key = ?", (key,)).fetchone()
    do_key = key[: -len(":undo")] + ":do" if undo else key
    if undo and row is None and not db.execute("SELECT 1 FROM seen WHERE key = ?",
                                                (do_key,)).fetchone():
        db.execute("COMMIT")
        return {"by": ctx.name, "step": step, "nothing_to_undo": True}
    if row is None:
        output = {"by": ctx.name, "step": step, "n": len(message.get("outputs") or {})}
        db.execute("INSERT INTO seen(key, output) VALUES (?, ?)", (key, json.dumps(output)))
        db.execute("INSERT INTO ledger(run_id, step, undo, key, agent, payload)"
                   " VALUES (?, ?, ?, ?, ?, ?)",
                   (message["run_id"], step, int(undo), key, ctx.name, json.dumps(message)))
    else:
        output = json.loads(row[0])
    db.execute("COMMIT")
    db.close()
    if not undo:  # applied, answered late
        time.sleep(control.get("sleep_after", {}).get(step, 0))
    return output
'''


class Lab:
    """The files the test agents share: handler, ledger DB, control file."""

    def __init__(self, base: Path) -> None:
        self.handler = base / "ledger_agent.py"
        self.handler.write_text(LEDGER_AGENT)
        self.dir, self.grant = grantable_dir()
        self.db = self.dir / "ledger.sqlite"
        self.control = self.dir / "control.json"
        self.set()

    def set(self, **control: object) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(control))
        tmp.replace(self.control)

    def config(self, undo: bool = False) -> str:
        return json.dumps({"db": str(self.db), "control": str(self.control), "undo": undo})

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return read_rows(self.db, sql, params)

    def ledger(self, run_id: str) -> list[tuple[str, int]]:
        """(step, undo) of each side effect applied for ``run_id``, in order."""
        rows = self.rows("SELECT step, undo FROM ledger WHERE run_id = ? ORDER BY id", (run_id,))
        return [(str(s), int(str(u))) for s, u in rows]


TRAIL_AGENT = '''
import json, sqlite3, time

def handle(message, ctx):
    control = json.loads(open(ctx.config["control"]).read())
    step = message["step"]
    db = sqlite3.connect(ctx.config["db"], timeout=60, isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS wf_calls(id INTEGER PRIMARY KEY, step TEXT,"
               " attempt INTEGER, key TEXT, input TEXT)")
    db.execute("INSERT INTO wf_calls(step, attempt, key, input) VALUES (?, ?, ?, ?)",
               (step, message["attempt"], message["idempotency_key"],
                json.dumps(message["input"])))
    db.close()
    if message["attempt"] <= control.get("fail_attempts", {}).get(step, 0):
        return {"error": {"code": "flaky", "message": f"{step} attempt {message['attempt']}"}}
    if step in control.get("fail", []):
        raise RuntimeError(f"{step} is broken")
    time.sleep(control.get("sleep", {}).get(step, 0))
    trail = (message["input"] or {}).get("trail", [])
    return {"trail": [*trail, step]}
'''


class TrailLab(Lab):
    """Workflow steps that append their name to ``trail`` in their input."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.handler = base / "trail_agent.py"
        self.handler.write_text(TRAIL_AGENT)

    def calls(self, step: str) -> list[tuple[object, ...]]:
        return self.rows("SELECT attempt, key, input FROM wf_calls WHERE step = ? ORDER BY id",
                         (step,))


def grantable_dir() -> tuple[Path, tuple[str, str]]:
    """A directory the confined test agents may write (``--grant write:DIR``),
    outside the test's base: naosd protects its runtime dir (the socket's, the
    base here) and no grant may reach it.  Removed when the test session ends
    (a daemon the test started may still use it after the test's objects go)."""
    path = Path(tempfile.mkdtemp(prefix="naos-lab-"))
    atexit.register(shutil.rmtree, str(path), True)
    return path, ("--grant", f"write:{path}")


def read_rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows the test agents wrote to ``path``: none yet while the first agent
    call is still creating the file or its tables."""
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=60)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        db.close()
