"""SQLite persistence for naosd: the ONLY module that imports apsw.

:class:`Store` owns one apsw connection to one database file: the schema and
its migrations (keyed on ``PRAGMA user_version``), transactions, the audit log
(hash chain logic lives in the pure ``naosd.storage.audit``), ``meta`` and ``kv``.
Every apsw error is translated into :class:`~naosd.errors.StorageError` here,
so nothing above this module ever sees apsw.

Durability. naosd acknowledges a state change only after it is in SQLite
(ARCHITECTURE.md, "Durability rules"). The database runs in WAL mode with
``PRAGMA synchronous=FULL`` by default, which makes SQLite fsync the WAL at
every COMMIT: once ``transaction()`` returns, the change (and the audit row
recording it) survives a crash of the process *and* a power loss. With
``synchronous="normal"`` the WAL is synced only at checkpoints: the database
can never be corrupted, but the last acknowledged transactions may vanish on a
power loss (a process crash alone still loses nothing). That is why "normal"
is an opt-in for throughput; it can also leave the audit checkpoint file
(fsynced on every append) ahead of the log after a power loss, which
:meth:`Store.verify_audit` then reports as deleted rows. naosd targets Linux,
where fsync reaches the disk (macOS would also need ``F_FULLFSYNC``).

Audit checkpoint. Deleting the *last* rows of a hash chain leaves a valid
chain, so after each commit that appended audit rows the new head
``{"seq": N, "hash": "...", "mac": "..."}`` is written to a separate file (tmp
file 0600, fsync, ``os.replace``) under an ``flock`` on a sidecar ``.lock``
file, and only if it is ahead of what the file holds (several processes may
append to the same database). A crash between COMMIT and that write leaves the
file one step behind, which verification accepts. With an audit key (see
``naosd.storage.audit_key``) the file is signed, so whoever can write the state
dir but not read the key cannot forge it. The file is created when a chain
starts (a Store opened on an empty log) and otherwise only by
:meth:`Store.append_anchored` (naosd's start check, ``audit reanchor``, see
``naosd.storage.anchor``): a missing or garbled file is never recreated quietly.

Threads. A Store is used from ONE thread at a time (naosd runs every call on a
single-thread executor); apsw raises ``ThreadingViolation`` for concurrent use
of one connection and this class adds no locking. Several processes, each with
its own Store on the same file, are safe: writes take ``BEGIN IMMEDIATE``.
"""

# Over 600 lines: B.2 makes this the only apsw importer; the checkpoint-file
# helpers (no apsw, ~70 lines) could move to their own module.
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import apsw

from naosd.errors import AuditError, CheckpointGarbled, ConfigError, NotFound, StorageError
from naosd.storage.audit import (
    GENESIS,
    AuditRow,
    Checkpoint,
    SignedHead,
    VerifyResult,
    canonical,
    format_ts,
    head_problem,
    make_row,
    verify_rows,
)
from naosd.storage.checkpoint import (
    advance_checkpoint,
    create_checkpoint,
    process_key,
    read_checkpoint,
    replace_checkpoint,
)

log = logging.getLogger(__name__)

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: audit log, daemon metadata, per-agent key/value store.
    """
    CREATE TABLE audit(
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        agent TEXT,
        type TEXT NOT NULL,
        detail TEXT NOT NULL,       -- canonical JSON (naosd.storage.audit.canonical)
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_type ON audit(type);
    CREATE INDEX audit_agent ON audit(agent);
    CREATE INDEX audit_ts ON audit(ts);
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE kv(
        agent TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY(agent, key)
    );
    """,
    # 2: agent and supervisor definitions (naosd.storage.definitions), agent logs.
    """
    CREATE TABLE supervisors(
        name TEXT PRIMARY KEY,
        strategy TEXT NOT NULL,
        max_restarts INTEGER NOT NULL,
        window_s REAL NOT NULL,
        backoff_initial_s REAL NOT NULL DEFAULT 0,
        backoff_max_s REAL NOT NULL DEFAULT 0,
        parent TEXT REFERENCES supervisors(name),
        restart TEXT NOT NULL DEFAULT 'permanent',
        position INTEGER NOT NULL DEFAULT 0,
        desired TEXT NOT NULL DEFAULT 'stopped',
        created_at TEXT NOT NULL
    );
    CREATE TABLE agents(
        name TEXT PRIMARY KEY,
        source_kind TEXT NOT NULL,
        source TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        supervisor TEXT REFERENCES supervisors(name),
        restart TEXT NOT NULL DEFAULT 'permanent',
        position INTEGER NOT NULL DEFAULT 0,
        desired TEXT NOT NULL DEFAULT 'stopped',
        shutdown_timeout_s REAL NOT NULL DEFAULT 5,
        created_at TEXT NOT NULL
    );
    CREATE INDEX agents_supervisor ON agents(supervisor, position);
    CREATE TABLE agent_logs(
        id INTEGER PRIMARY KEY,
        agent TEXT NOT NULL,
        ts TEXT NOT NULL,
        level TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX agent_logs_agent ON agent_logs(agent, id);
    """,
    # 3: durable sagas, workflows and pools (naosd.storage.runs): definitions,
    # runs (the pure state machine's record) and each run's step timeline.
    """
    CREATE TABLE orch_defs(
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY(kind, name)
    );
    CREATE TABLE orch_runs(
        run_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX orch_runs_status ON orch_runs(kind, status);
    CREATE TABLE orch_timeline(
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        ts TEXT NOT NULL,
        type TEXT NOT NULL,
        step TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX orch_timeline_run ON orch_timeline(run_id, id);
    """,
    # 4: cluster mode (naosd.storage.cluster): agent requirements, the nodes of
    # the convention as this node sees them, and where each agent was placed.
    """
    ALTER TABLE agents ADD COLUMN requires TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE cluster_nodes(
        name TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        capabilities TEXT NOT NULL DEFAULT '[]',
        state TEXT NOT NULL,
        local INTEGER NOT NULL DEFAULT 0,
        last_heartbeat TEXT,
        changed_at TEXT NOT NULL
    );
    CREATE TABLE agent_placements(
        agent TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        placed_at TEXT NOT NULL
    );
    """,
    # 5: trust gate (naosd.storage.trust): local AXIS registry, AXIS answer
    # cache, trust policies (scope '*' is the global one).
    """
    CREATE TABLE axis_agents(
        agent TEXT PRIMARY KEY,
        auid TEXT NOT NULL,
        t_score INTEGER,
        c_score INTEGER,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE axis_cache(
        auid TEXT PRIMARY KEY,
        t_score INTEGER NOT NULL,
        c_score INTEGER NOT NULL,
        fetched_at TEXT NOT NULL
    );
    CREATE TABLE trust_policy(
        scope TEXT PRIMARY KEY,
        policy TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 6: broker and cost controller (naosd.storage.ledger): installed WASM skills
    # (module bytes inside the row: an install is one transaction), budgets, the
    # cost ledger of every route kind.
    """
    CREATE TABLE skills(
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        manifest TEXT NOT NULL,
        module BLOB NOT NULL,
        sha256 TEXT NOT NULL,
        installed_at TEXT NOT NULL
    );
    CREATE TABLE budgets(
        scope TEXT PRIMARY KEY,      -- an agent name, or '*' for the global budget
        limit_micro INTEGER NOT NULL,
        period TEXT NOT NULL,
        alert_at TEXT NOT NULL,      -- JSON list of percents
        action TEXT NOT NULL,
        throttle_rate REAL NOT NULL,
        throttle_burst INTEGER NOT NULL,
        period_start TEXT NOT NULL,
        spent_micro INTEGER NOT NULL DEFAULT 0,
        alerted TEXT NOT NULL DEFAULT '[]',
        paused INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE cost_ledger(
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        task_id TEXT NOT NULL,
        agent TEXT,
        route_kind TEXT NOT NULL,
        handler TEXT NOT NULL,
        status TEXT NOT NULL,        -- ok or failed
        reserved_micro INTEGER NOT NULL,
        cost_micro INTEGER NOT NULL,
        llm_estimate_micro INTEGER NOT NULL,
        estimated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX cost_ledger_ts ON cost_ledger(ts);
    CREATE INDEX cost_ledger_agent ON cost_ledger(agent, ts);
    """,
    # 7: durable pool queue tasks (naosd.storage.pool_tasks): a submitted task is a
    # row before ``pool.submit`` answers; started/finished are written around
    # the agent call, so a restart re-queues what was queued or in doubt.
    """
    CREATE TABLE pool_tasks(
        seq INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL UNIQUE,
        pool TEXT NOT NULL,
        status TEXT NOT NULL,
        member TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL DEFAULT 0,
        input TEXT NOT NULL,
        output TEXT,
        error TEXT NOT NULL DEFAULT '',
        submitted_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE INDEX pool_tasks_status ON pool_tasks(pool, status, seq);
    """,
    # 8: MCP servers naos is a client of (naosd.storage.tool_servers): the whole
    # definition as JSON (checked by actors.domain.tool_servers when read); a
    # bearer token is never stored, only the file or variable it is read from.
    """
    CREATE TABLE tool_servers(
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 9: how an agent's handler runs (actors.domain.definitions.check_execution):
    # concurrency, confinement, environment, grants, limits, its code's digest.
    """
    ALTER TABLE agents ADD COLUMN execution TEXT NOT NULL DEFAULT '{}';
    """,
    # 10: schedules (naosd.storage.schedules): the next slot due and the last one
    # fired, written in the transaction that starts the run, so a restart neither
    # fires a slot twice nor loses one; agent firings not answered yet (in_flight)
    # are sent again under the same idempotency key.  Runs listed by creation time.
    """
    CREATE TABLE schedules(
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        next_due REAL NOT NULL,
        last_slot REAL,
        last_run TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        fired INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        in_flight TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX orch_runs_created ON orch_runs(kind, created_at);
    """,
)
"""Migration scripts; script ``i`` takes the schema from version i to i+1."""

SCHEMA_VERSION: Final = len(MIGRATIONS)
MALFORMED_DETAIL: Final = "_malformed_detail"
"""Key under which reads return a stored detail that is not canonical JSON."""

_SYNCHRONOUS: Final = {"full": "FULL", "normal": "NORMAL"}
_COLUMNS: Final = "seq, ts, actor, agent, type, detail, prev_hash, hash"


def utcnow() -> datetime:
    """The default clock: an aware UTC datetime."""
    return datetime.now(UTC)


@contextlib.contextmanager
def _translate_errors(where: str) -> Iterator[None]:
    """Turn apsw errors into StorageError naming ``where`` (the DB file)."""
    try:
        yield
    except apsw.BusyError as exc:
        raise StorageError(f"{where}: database busy: {exc}") from exc
    except apsw.Error as exc:
        raise StorageError(f"{where}: {exc}") from exc


class Tx:
    """One open ``BEGIN IMMEDIATE`` transaction, handed out by
    :meth:`Store.transaction`; it is dead once the ``with`` block ends.
    ``last_audit`` is the last row its :meth:`audit` appended, if any."""

    __slots__ = ("_clock", "_conn", "_open", "_where", "last_audit")

    def __init__(self, conn: apsw.Connection, clock: Callable[[], datetime], where: str) -> None:
        self._conn = conn
        self._clock = clock
        self._where = where
        self._open = True
        self.last_audit: AuditRow | None = None

    def audit(
        self,
        type: str,
        *,
        actor: str = "naosd",
        agent: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditRow:
        """Append an audit row that commits or rolls back with this transaction.

        Raises:
            AuditError: if a field has the wrong type or cannot be encoded, or
                the clock returns a naive datetime.
            StorageError: if the transaction is over or SQLite fails.
        """
        self._check_open()
        ts = format_ts(self._clock())
        with _translate_errors(self._where):
            prev = _head(self._conn)
            row = make_row(
                prev,
                ts=ts,
                actor=actor,
                agent=agent,
                type=type,
                detail={} if detail is None else detail,
            )
            self._conn.execute(
                f"INSERT INTO audit({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _row_values(row),
            )
        self.last_audit = row
        return row

    def execute(self, sql: str, params: apsw.Bindings | None = None) -> list[apsw.SQLiteValues]:
        """Run one statement in this transaction and return all result rows.

        Raises:
            StorageError: if the transaction is over or SQLite fails.
        """
        self._check_open()
        with _translate_errors(self._where):
            return self._conn.execute(sql, params).fetchall()

    def set_meta(self, key: str, value: str) -> None:
        """Insert or replace ``meta[key]`` in this transaction."""
        self.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def kv_set(self, agent: str, key: str, value: bytes) -> None:
        """Insert or replace ``kv[agent, key]`` in this transaction."""
        self.execute(
            "INSERT INTO kv(agent, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(agent, key) DO UPDATE SET value = excluded.value",
            (agent, key, value),
        )

    def _check_open(self) -> None:
        if not self._open:
            raise StorageError(f"{self._where}: transaction already finished")

    def _finish(self) -> None:
        self._open = False


class Store:
    """The naosd database. Build it with :meth:`open`; :meth:`close` it."""

    def __init__(
        self,
        conn: apsw.Connection,
        db_path: Path,
        checkpoint_path: Path | None,
        clock: Callable[[], datetime],
        head_key: bytes | None = None,
    ) -> None:
        """Wrap an already configured and migrated connection (see :meth:`open`)."""
        self._db: apsw.Connection | None = conn
        self._where = str(db_path)
        self._checkpoint_path = checkpoint_path
        self._clock = clock
        self._key = head_key

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        db_path: Path,
        *,
        checkpoint_path: Path | None = None,
        synchronous: str = "full",
        busy_timeout_ms: int = 5000,
        clock: Callable[[], datetime] = utcnow,
        head_key: bytes | None = None,
    ) -> Store:
        """Open (creating if needed) and migrate the database at ``db_path``.

        Args:
            db_path: the SQLite file; its directory must exist.
            checkpoint_path: where the audit head is mirrored (None: nowhere).
            synchronous: "full" (durable on power loss) or "normal".
            busy_timeout_ms: how long to wait for another writer's lock.
            clock: returns the aware datetime stamped on audit rows.
            head_key: the audit key that signs and checks the checkpoint
                (None: the key naosd installed in this process, if any).

        Raises:
            ConfigError: if ``synchronous`` is not "full" or "normal".
            StorageError: if the file cannot be opened, is not a database,
                cannot switch to WAL, has a schema newer than this code, or a
                migration fails; or ``checkpoint_path``'s directory is missing.
        """
        mode = _SYNCHRONOUS.get(synchronous)
        if mode is None:
            raise ConfigError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        if checkpoint_path is not None and not checkpoint_path.parent.is_dir():
            raise StorageError(f"audit checkpoint directory {checkpoint_path.parent} is missing")
        where = str(db_path)
        with _translate_errors(where):
            conn = apsw.Connection(where)
        try:
            with _translate_errors(where):
                _configure(conn, where, mode, busy_timeout_ms)
                _migrate(conn, where)
                key = head_key if head_key is not None else process_key()
                store = cls(conn, db_path, checkpoint_path, clock, key)
                empty = _head(conn) is None
            if checkpoint_path is not None and empty:  # a new chain: anchor it at genesis
                try:
                    create_checkpoint(checkpoint_path, Checkpoint(0, GENESIS), key=key)
                except OSError as exc:
                    raise StorageError(f"audit checkpoint {checkpoint_path}: {exc}") from exc
            return store
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close the connection; later calls raise StorageError. Idempotent."""
        if self._db is not None:
            db, self._db = self._db, None
            with _translate_errors(self._where):
                db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transactions ------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` if the block raises.

        Audit rows written with ``tx.audit`` commit atomically with the state
        changes made through ``tx.execute``. After COMMIT the audit checkpoint
        file is advanced; failing to do so is logged, not raised, because the
        change is already durable and acknowledged by then.

        Raises:
            StorageError: if the store is closed, a transaction is already open
                on it, the write lock is not obtained within the busy timeout,
                or COMMIT fails (the transaction is then rolled back).
        """
        with self._committed() as tx:
            yield tx
        if tx.last_audit is not None:
            self._publish_head(Checkpoint(tx.last_audit.seq, tx.last_audit.hash))

    @contextlib.contextmanager
    def _committed(self) -> Iterator[Tx]:
        """The transaction itself, without touching the checkpoint file."""
        db = self._conn()
        if _in_transaction(db):
            raise StorageError(f"{self._where}: transactions cannot be nested")
        with _translate_errors(self._where):
            db.execute("BEGIN IMMEDIATE")
        tx = Tx(db, self._clock, self._where)
        try:
            yield tx
            if not _in_transaction(db):
                raise StorageError(f"{self._where}: transaction ended inside its block")
            with _translate_errors(self._where):
                db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        finally:
            tx._finish()

    def _rollback(self, db: apsw.Connection) -> None:
        if not _in_transaction(db):
            return
        try:
            db.execute("ROLLBACK")
        except apsw.Error:  # keep the original exception; this one is secondary
            log.exception("%s: ROLLBACK failed", self._where)

    def _conn(self) -> apsw.Connection:
        if self._db is None:
            raise StorageError(f"{self._where}: store is closed")
        return self._db

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only statement; rows as tuples.  (naosd.storage.definitions's
        SQL goes through here and through :meth:`transaction`.)"""
        with _translate_errors(self._where):
            return [tuple(r) for r in self._conn().execute(sql, params).fetchall()]

    def now_iso(self) -> str:
        """The store clock's current time, formatted like audit timestamps."""
        return format_ts(self._clock())

    # -- audit log ---------------------------------------------------------

    def append_audit(
        self,
        type: str,
        *,
        actor: str = "naosd",
        agent: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditRow:
        """Append one audit row in its own transaction (see :meth:`Tx.audit`)."""
        with self.transaction() as tx:
            return tx.audit(type, actor=actor, agent=agent, detail=detail)

    def append_anchored(self, type: str, *, actor: str = "naosd",
                        detail: dict[str, Any] | None = None) -> AuditRow:
        """Append one row, then write the checkpoint at it whatever the file
        held: the row says why (an alert, a reanchor). Without a checkpoint
        path this is :meth:`append_audit`.

        Raises:
            OSError: if the checkpoint file cannot be written (the row is in).
        """
        with self._committed() as tx:
            row = tx.audit(type, actor=actor, detail=detail)
        if self._checkpoint_path is not None:
            replace_checkpoint(self._checkpoint_path, Checkpoint(row.seq, row.hash),
                               key=self._key)
        return row

    @property
    def checkpoint_path(self) -> Path | None:
        return self._checkpoint_path

    @property
    def audit_key(self) -> bytes | None:
        """The key that signs the checkpoint (never shown, audited or logged)."""
        return self._key

    def read_checkpoint(self) -> Checkpoint | None:
        """The checkpoint file's head (None: no path, or no file).

        Raises:
            CheckpointGarbled: see :func:`naosd.storage.checkpoint.read_checkpoint`.
        """
        if self._checkpoint_path is None:
            return None
        return read_checkpoint(self._checkpoint_path, self._key)

    def audit_head(self) -> Checkpoint | None:
        """The last row's (seq, hash) in the database, or None if it is empty."""
        with _translate_errors(self._where):
            return _head(self._conn())

    def audit_tail(
        self,
        n: int = 20,
        *,
        agent: str | None = None,
        type: str | tuple[str, ...] | None = None,
        since: str | None = None,
    ) -> list[AuditRow]:
        """The last ``n`` matching rows, in ascending seq order; ``type`` may
        name several types.

        ``since`` is an inclusive lower bound on ``ts`` (a UTC ISO-8601 prefix
        such as "2025-01-31" or "2025-01-31T12:00").
        """
        where, params = _filters(agent, type, since)
        return self._select_last(where, params, n)

    def audit_after(
        self,
        seq: int,
        *,
        agent: str | None = None,
        type: str | None = None,
        limit: int = 500,
    ) -> list[AuditRow]:
        """Up to ``limit`` matching rows with a seq above ``seq``, ascending."""
        where, params = _filters(agent, type, None)
        return self._select_first([*where, "seq > ?"], [*params, seq], limit)

    def audit_search(
        self,
        query: str,
        *,
        limit: int = 100,
        agent: str | None = None,
        type: str | None = None,
        since: str | None = None,
    ) -> list[AuditRow]:
        """The last ``limit`` rows containing ``query``, ascending.

        Matching is a substring test over type, actor, agent and the detail's
        canonical JSON text, case-insensitive for ASCII letters (SQLite LIKE);
        ``%``, ``_`` and ``\\`` in ``query`` match themselves.
        """
        where, params = _filters(agent, type, since)
        pattern = "%" + _escape_like(query) + "%"
        match = " OR ".join(
            f"{col} LIKE ? ESCAPE '\\'" for col in ("type", "actor", "agent", "detail")
        )
        return self._select_last([*where, f"({match})"], [*params, *[pattern] * 4], limit)

    def iter_audit(
        self,
        *,
        agent: str | None = None,
        type: str | None = None,
        since: str | None = None,
        batch: int = 1000,
    ) -> Iterator[AuditRow]:
        """Yield every matching row in seq order, reading ``batch`` at a time.

        No read transaction is held between batches, so rows appended while
        iterating are included; the Store must not be closed mid-iteration.
        """
        where, params = _filters(agent, type, since)
        last = 0
        while True:
            rows = self._select_first([*where, "seq > ?"], [*params, last], batch)
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].seq

    def verify_audit(self, anchor: SignedHead | None = None) -> VerifyResult:
        """Check the whole hash chain against the checkpoint file and, if
        given, an exported head kept outside (``anchor``).

        Not ok also when the log has rows but the checkpoint file is missing,
        when the file cannot be parsed or is not signed with the audit key
        (``first_bad_seq`` is then None unless a row problem comes first),
        when an alert row has not been acknowledged (``alert_seq``), and when
        ``anchor`` was not signed with this store's key.

        Raises:
            StorageError: if the database cannot be read.
        """
        if anchor is not None:
            problem = "no audit key" if self._key is None else head_problem(self._key, anchor)
            if problem is not None:
                return VerifyResult(False, 0, None, f"anchor: {problem}", 0, GENESIS)
        # Read the checkpoint before the rows: rows only grow, so a concurrent
        # appender can only make the checkpoint lag, never overtake the rows.
        checkpoint, problem = self._checkpoint_for_verify()
        rows = (_row_for_verify(t) for t in self._iter_raw())
        mark = Checkpoint(anchor.seq, anchor.hash) if anchor is not None else None
        result = verify_rows(rows, checkpoint=checkpoint, anchor=mark)
        if result.ok and problem is not None:
            return replace(result, ok=False, reason=problem)
        return result

    def _checkpoint_for_verify(self) -> tuple[Checkpoint | None, str | None]:
        try:
            checkpoint = self.read_checkpoint()
        except CheckpointGarbled as exc:
            return None, str(exc)
        if checkpoint is None and self._checkpoint_path is not None and self.audit_head():
            return None, f"audit checkpoint {self._checkpoint_path} is missing"
        return checkpoint, None

    def _iter_raw(self, batch: int = 1000) -> Iterator[Any]:
        sql = f"SELECT {_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?"
        last = 0
        while True:
            with _translate_errors(self._where):
                rows = _query(self._conn(), sql, (last, batch))
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def _select_first(self, where: list[str], params: list[Any], limit: int) -> list[AuditRow]:
        if limit <= 0:
            return []
        sql = f"SELECT {_COLUMNS} FROM audit{_where_sql(where)} ORDER BY seq LIMIT ?"
        return self._fetch_rows(sql, [*params, limit])

    def _select_last(self, where: list[str], params: list[Any], limit: int) -> list[AuditRow]:
        if limit <= 0:
            return []
        sql = f"SELECT {_COLUMNS} FROM audit{_where_sql(where)} ORDER BY seq DESC LIMIT ?"
        return self._fetch_rows(sql, [*params, limit])[::-1]

    def _fetch_rows(self, sql: str, params: list[Any]) -> list[AuditRow]:
        with _translate_errors(self._where):
            return [_row_from_db(t) for t in _query(self._conn(), sql, params)]

    # -- checkpoint file ---------------------------------------------------

    def _publish_head(self, head: Checkpoint) -> None:
        """Advance the checkpoint file to ``head``; log (not raise) failures."""
        path = self._checkpoint_path
        if path is None:
            return
        try:
            advance_checkpoint(path, head, key=self._key, matches=self._holds)
        except (OSError, StorageError) as exc:
            log.warning(
                "audit row %d committed but checkpoint %s not updated: %s", head.seq, path, exc
            )

    def _holds(self, checkpoint: Checkpoint) -> bool:
        """True if the database still has the row ``checkpoint`` names."""
        if checkpoint.seq == 0:
            return checkpoint.hash == GENESIS
        with _translate_errors(self._where):
            rows = self._conn().execute(
                "SELECT hash FROM audit WHERE seq = ?", (checkpoint.seq,)
            ).fetchall()
        return bool(rows) and rows[0][0] == checkpoint.hash

    # -- meta and kv -------------------------------------------------------

    def get_meta(self, key: str) -> str:
        """Return ``meta[key]``.

        Raises:
            NotFound: if the key is not set.
        """
        value = self.get_meta_or_none(key)
        if value is None:
            raise NotFound(f"meta key {key!r} is not set")
        return value

    def get_meta_or_none(self, key: str) -> str | None:
        """Return ``meta[key]``, or None if it is not set."""
        with _translate_errors(self._where):
            return _meta_value(self._conn(), key)

    def set_meta(self, key: str, value: str) -> None:
        """Insert or replace ``meta[key]`` (one transaction)."""
        with self.transaction() as tx:
            tx.set_meta(key, value)

    def kv_get(self, agent: str, key: str) -> bytes:
        """Return the value stored for ``(agent, key)``.

        Raises:
            NotFound: if nothing is stored under that key.
        """
        with _translate_errors(self._where):
            rows = _query(
                self._conn(),
                "SELECT value FROM kv WHERE agent = ? AND key = ?",
                (agent, key),
            )
        if not rows:
            raise NotFound(f"agent {agent!r} has no key {key!r}")
        return bytes(rows[0][0])

    def kv_set(self, agent: str, key: str, value: bytes) -> None:
        """Insert or replace ``kv[agent, key]`` (one transaction)."""
        with self.transaction() as tx:
            tx.kv_set(agent, key, value)


# -- SQL helpers ---------------------------------------------------------------


def _configure(conn: apsw.Connection, where: str, mode: str, busy_ms: int) -> None:
    conn.setbusytimeout(busy_ms)
    journal = _enable_wal(conn, busy_ms)
    if journal != "wal":
        raise StorageError(f"{where}: cannot use WAL (journal_mode is {journal!r})")
    conn.execute(f"PRAGMA synchronous={mode}")
    conn.execute("PRAGMA foreign_keys=ON")


def _enable_wal(conn: apsw.Connection, busy_ms: int) -> Any:
    """Switch to WAL, retrying while busy until ``busy_ms`` have passed.

    Switching needs an exclusive lock, and while another connection holds
    RESERVED, SQLite returns SQLITE_BUSY at once instead of calling the busy
    handler (waiting could deadlock). Seen when several processes open a
    fresh file together (about 1 run in 60 of a 6-process test).
    """
    deadline = time.monotonic() + busy_ms / 1000
    while True:
        try:
            return _query(conn, "PRAGMA journal_mode=WAL")[0][0]
        except apsw.BusyError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _in_transaction(conn: apsw.Connection) -> bool:
    # A call, not the attribute: mypy would narrow the attribute after one
    # check and treat the state as constant across the transaction's body.
    return conn.in_transaction


def _query(conn: apsw.Connection, sql: str, params: apsw.Bindings | None = None) -> list[Any]:
    """All result rows of one statement (rows typed Any: columns are ours)."""
    return list(conn.execute(sql, params))


def _user_version(conn: apsw.Connection) -> int:
    return int(_query(conn, "PRAGMA user_version")[0][0])


def _migrate(conn: apsw.Connection, where: str) -> None:
    """Apply pending migrations, one transaction each.

    Raises:
        StorageError: if the file's schema is newer than :data:`MIGRATIONS`.
    """
    while (version := _check_version(_user_version(conn), where)) < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated.
            if _user_version(conn) == version:
                conn.execute(MIGRATIONS[version])
                conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _check_version(version: int, where: str) -> int:
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{where} has schema version {version} but this naosd knows only up to "
            f"{SCHEMA_VERSION}: it was written by a newer naos; upgrade naos"
        )
    return version


def _head(conn: apsw.Connection) -> Checkpoint | None:
    rows = _query(conn, "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
    return Checkpoint(rows[0][0], rows[0][1]) if rows else None


def _meta_value(conn: apsw.Connection, key: str) -> str | None:
    rows = _query(conn, "SELECT value FROM meta WHERE key = ?", (key,))
    return str(rows[0][0]) if rows else None


def _filters(
    agent: str | None, type_: str | tuple[str, ...] | None, since: str | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for clause, value in (("agent = ?", agent), ("type = ?", type_), ("ts >= ?", since)):
        if isinstance(value, tuple):  # one of several types
            where.append(f"type IN ({', '.join('?' for _ in value)})")
            params.extend(value)
        elif value is not None:
            where.append(clause)
            params.append(value)
    return where, params


def _where_sql(where: list[str]) -> str:
    return " WHERE " + " AND ".join(where) if where else ""


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row_values(row: AuditRow) -> tuple[Any, ...]:
    detail = canonical(row.detail).decode("utf-8")
    return (row.seq, row.ts, row.actor, row.agent, row.type, detail, row.prev_hash, row.hash)


def _decode_detail(text: Any) -> dict[str, Any] | None:
    """The detail dict, or None if ``text`` is not the canonical JSON of one."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
        ok = isinstance(value, dict) and canonical(value) == text.encode("utf-8")
    except (ValueError, AuditError):  # UnicodeEncodeError is a ValueError
        return None
    return value if ok else None


def _decode_row(t: tuple[Any, ...]) -> tuple[AuditRow, bool]:
    """The row, and whether its detail was the canonical JSON of a dict.

    A tampered detail is kept as text under :data:`MALFORMED_DETAIL`.
    """
    seq, ts, actor, agent, type_, text, prev_hash, digest = t
    detail = _decode_detail(text)
    intact = detail is not None
    if detail is None:
        detail = {MALFORMED_DETAIL: text if isinstance(text, str) else repr(text)}
    return AuditRow(seq, ts, actor, agent, type_, detail, prev_hash, digest), intact


def _row_from_db(t: tuple[Any, ...]) -> AuditRow:
    return _decode_row(t)[0]


def _row_for_verify(t: tuple[Any, ...]) -> AuditRow:
    """A row whose detail is not canonical JSON gets an empty hash, which no
    sha256 hexdigest equals: verify_rows then reports it as edited, after its
    seq and link checks, like any other edit."""
    row, intact = _decode_row(t)
    return row if intact else replace(row, hash="")
