"""What a killed naosd left running, found and killed by the next start on the
same state directory (stdlib only).

Every Thespian process of naosd's tree (admin, logger, actors) is in the
admin's session and arms ``PR_SET_PDEATHSIG``, so a ``kill -9`` of naosd
normally takes the tree with it. Where that failed (no subreaper, a kill in
the instant before the admin armed its signal, a platform without prctl), an
old admin could go on running, holding its port and agents that write to the
database. naosd records its tree in ``<state_dir>/actors.session`` at start
and removes it at a clean stop; the next start kills what the record names.
The instance lock guarantees the recording naosd is dead by then."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from naosd.runtime import proctable as pt

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """How the next naosd on this state dir recognises this one's processes."""

    boot_id: str
    session: int  # the admin's session: every Thespian process of the tree
    first_start: int  # the earliest start time (clock ticks) among them
    port: int  # the admin's, for the log
    cmdline: str  # naosd's, kept by every forked actor

    @classmethod
    def of_session(cls, session: int, port: int) -> SessionRecord | None:
        """The record of the running ``session`` (None if it has no process)."""
        starts = [p.start for p in pt.proc_table() if p.session == session]
        if not starts:
            return None
        return cls(pt.boot_id(), session, min(starts), port, pt.cmdline(os.getpid()))

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self)) + "\n", encoding="ascii")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SessionRecord | None:
        try:
            raw = json.loads(path.read_text(encoding="ascii"))
            return cls(str(raw["boot_id"]), int(raw["session"]), int(raw["first_start"]),
                       int(raw["port"]), str(raw["cmdline"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def stale_pids(record: SessionRecord) -> set[int]:
    """The live processes of ``record``'s tree.

    A process qualifies if it is in the recorded session, started no earlier
    than the recorded tree, since the same boot, and runs naosd's recorded
    command line. A session id cannot be reused while any process is in that
    session; should the whole session have died and its number been taken by
    a new one, that session's leader is alive (pid == session id), while ours
    exited at once when the admin daemonized: then nothing is touched."""
    if not record.boot_id or record.boot_id != pt.boot_id() or record.session <= 1:
        return set()
    table = pt.proc_table()
    if any(p.pid == record.session and p.state not in ("Z", "X") for p in table):
        return set()
    me = pt.read_proc(os.getpid())
    own = me.session if me is not None else None
    return {p.pid for p in table
            if p.session == record.session != own and p.pid != os.getpid()
            and p.start >= record.first_start and p.state not in ("Z", "X")
            and pt.cmdline(p.pid) == record.cmdline}


def kill_stale(record_path: Path, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL what the record at ``record_path`` names and is still running,
    wait until it is gone, and return the pids killed."""
    record = SessionRecord.load(record_path)
    if record is None:
        return []
    pids = stale_pids(record)
    if pids:
        log.warning("killing %d processes left by a previous naosd (session %d, admin "
                    "port %d): %s", len(pids), record.session, record.port, sorted(pids))
        pt.signal_all(pids, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while any(pt.alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.01)
        pt.reap(pids)
    return sorted(pids)
