"""Where the decision log lives: a SQLite file (the embedded default) or a PostgreSQL database (shared by replicas).

:class:`router_ml.decision_log.DecisionLog` writes its SQL once, in the subset both engines speak (``?``
placeholders, ``INSERT ... ON CONFLICT``); a store runs it in transactions, tells a fault of the engine (the log
cannot be used now: raise :class:`LogUnavailable`) from a broken unique constraint, and owns the DDL and the schema
version. ``location`` picks the engine: a ``postgresql://`` URL, else a file path.

* **SQLite**: one connection behind a lock, WAL mode, ``BEGIN IMMEDIATE`` for writes (so writers are serialised and
  sequence numbers are assigned in commit order), ``synchronous=FULL`` or ``NORMAL``.
* **PostgreSQL** (psycopg 3 and its connection pool; ``pip install router-ml[scale]``): one connection per thread
  from a pool, each write its own transaction. Writes that need the commit order of their sequence numbers to match
  (feedback: the learner reads it in sequence order) take a transaction-scoped advisory lock
  (:meth:`Session.serialize`); schema creation takes another, so replicas starting together do not race.

**Schema versions.** ``meta.schema_version`` holds the version; opening a log applies every migration after it in
order, in one transaction, and refuses a log written by a newer router-ml. Version 1 had no ``decisions.outcome``;
version 2 added it; version 3 (current) adds ``feedback.source`` and ``feedback.grader`` (who graded) and the
``grade_jobs`` table (the background grading's durable jobs, :mod:`serve.grading`).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from router_ml.errors import RouterMLError

Durability = Literal["full", "normal"]
SCHEMA_VERSION = 3
_FEEDBACK_LOCK = 7_365_001
_SCHEMA_LOCK = 7_365_002
LEARNER_LOCK = 7_365_003
"""The advisory lock a single learner holds on a PostgreSQL log for as long as it runs."""


class LogUnavailable(RouterMLError, RuntimeError):
    """The log cannot be written or read now (disk full, read-only, locked, database unreachable, I/O error)."""


class DuplicateRow(Exception):
    """A write broke a unique constraint (the same decision graded twice)."""


class Session(Protocol):
    """One transaction's view of the database."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement with ``?`` placeholders; returns a cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        ...

    def serialize(self) -> None:
        """Hold, until this transaction ends, the lock that orders feedback writes by sequence number."""
        ...


_COLUMNS = {
    "decisions": (
        "decision_id TEXT NOT NULL UNIQUE, created_at {real} NOT NULL, tenant TEXT, prompt TEXT NOT NULL,"
        " model TEXT NOT NULL, propensity {real} NOT NULL, candidates TEXT NOT NULL, distribution TEXT NOT NULL,"
        " lam {real} NOT NULL, policy_version TEXT NOT NULL, est_cost_usd {real} NOT NULL, answered_by TEXT,"
        " cost_usd {real}, input_tokens {int}, output_tokens {int}, outcome TEXT"
    ),
    "feedback": (
        "decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(decision_id), received_at {real} NOT NULL,"
        " quality {real} NOT NULL, cost_usd {real}, source TEXT, grader TEXT"
    ),
    "grade_jobs": (
        "decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(decision_id), created_at {real} NOT NULL,"
        " state TEXT NOT NULL, grader TEXT NOT NULL, answer TEXT, reference TEXT, attempts {int} NOT NULL DEFAULT 0,"
        " next_at {real} NOT NULL, claimed_until {real}, reason TEXT, cost_usd {real} NOT NULL DEFAULT 0,"
        " ended_at {real}"
    ),
}
_MIGRATIONS: dict[int, tuple[tuple[str, str], ...]] = {
    1: (("decisions", "outcome TEXT"),),
    2: (("feedback", "source TEXT"), ("feedback", "grader TEXT")),
}
"""The ``(table, column definition)`` pairs that take a log from version ``k`` to ``k + 1``; a column is added only
where the table lacks it (a table the log did not have yet was just created whole)."""


class Store:
    """A database the decision log runs in. Subclasses open the connection; :meth:`run` is the only way in."""

    where: str
    """The log's location as it may be shown (a path, or a URL without its password)."""

    def run(self, work: Callable[[Session], Any], *, write: bool) -> Any:
        """Run ``work`` in one transaction (read-only unless ``write``); engine faults raise :class:`LogUnavailable`,
        a broken unique constraint :class:`DuplicateRow`."""
        raise NotImplementedError

    def columns(self, session: Session, table: str) -> set[str]:
        """The column names of ``table``."""
        raise NotImplementedError

    def ddl(self) -> list[str]:
        """The statements that create the current schema (idempotent)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connections."""
        raise NotImplementedError

    def learner_lock(self) -> contextlib.AbstractContextManager[bool]:
        """Try to become the log's one learner for as long as the block runs; yields whether it did. The lock goes
        with the process: a learner killed with kill -9 releases it."""
        raise NotImplementedError

    def migrate(self) -> str:
        """Create or upgrade the schema; returns the log's id (made the first time)."""

        def work(s: Session) -> str:
            self.lock_schema(s)
            fresh = not self.columns(s, "decisions")
            for statement in self.ddl():
                s.execute(statement)
            row = s.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None:
                version = int(row[0])
            elif fresh:
                version = SCHEMA_VERSION
            else:  # a log from before versions: 1 (no outcome column) or 2 (the first to write its version)
                version = 2 if "outcome" in self.columns(s, "decisions") else 1
            if version > SCHEMA_VERSION:
                raise LogUnavailable(
                    f"decision log {self.where} has schema version {version}; this router-ml reads up to "
                    f"{SCHEMA_VERSION}: upgrade router-ml"
                )
            for step in range(version, SCHEMA_VERSION):
                for table, column in _MIGRATIONS[step]:
                    if column.split()[0] not in self.columns(s, table):
                        s.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            s.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            s.execute("INSERT INTO meta VALUES ('log_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,))
            return str(s.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0])

        result: str = self.run(work, write=True)
        return result

    def lock_schema(self, session: Session) -> None:
        """Keep other processes out of schema changes until this transaction ends (a no-op where writes are serial)."""

    def _tables(self, real: str, integer: str, key: str) -> list[str]:
        out = ["CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"]
        for table, columns in _COLUMNS.items():
            out.append(f"CREATE TABLE IF NOT EXISTS {table} ({key}, {columns.format(real=real, int=integer)})")
        return [*out, "CREATE INDEX IF NOT EXISTS grade_jobs_due ON grade_jobs (state, next_at)"]


class _SqliteSession:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, params)

    def serialize(self) -> None:
        """Writers are already serialised by ``BEGIN IMMEDIATE``."""


class SqliteStore(Store):
    """One SQLite file in WAL mode; one connection behind a lock."""

    def __init__(self, path: str | Path, durability: Durability = "full", *, busy_timeout: float = 5.0) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"decision log: 'durability' must be 'full' or 'normal', got {durability!r}")
        self.path = Path(path)
        self.where = str(self.path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        except (OSError, sqlite3.Error) as exc:
            raise LogUnavailable(f"decision log {self.path}: {exc}") from exc

    def ddl(self) -> list[str]:
        return self._tables("REAL", "INTEGER", "seq INTEGER PRIMARY KEY AUTOINCREMENT")

    def columns(self, session: Session, table: str) -> set[str]:
        return {row[1] for row in session.execute(f"PRAGMA table_info({table})")}

    def run(self, work: Callable[[Session], Any], *, write: bool) -> Any:
        with self._lock:
            session = _SqliteSession(self._db)
            try:
                if not write:
                    return work(session)
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(session)
                    self._db.execute("COMMIT")
                    return result
                except BaseException:
                    if self._db.in_transaction:  # SQLite has already rolled back after some errors
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                raise DuplicateRow(str(exc)) from exc
            except sqlite3.OperationalError as exc:
                raise LogUnavailable(f"decision log unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def learner_lock(self) -> Iterator[bool]:
        """An exclusive ``flock`` on ``<log>.learner.lock``."""
        import fcntl

        with open(f"{self.path}.learner.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class _PgSession:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s"), tuple(params))

    def serialize(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_FEEDBACK_LOCK,))


def redact(url: str) -> str:
    """A database URL without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class PostgresStore(Store):
    """A PostgreSQL database, through a psycopg connection pool (one connection per concurrent caller)."""

    def __init__(self, url: str, *, busy_timeout: float = 5.0, max_connections: int = 8) -> None:
        self.url = url
        self.where = redact(url)
        self._timeout = busy_timeout
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise LogUnavailable(
                "decision log on PostgreSQL needs psycopg: pip install 'router-ml[scale]'"
            ) from exc
        self._errors = (psycopg.OperationalError, psycopg.InterfaceError)
        self._unique = psycopg.errors.UniqueViolation
        try:
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max_connections,
                timeout=busy_timeout,
                check=ConnectionPool.check_connection,
                kwargs={"connect_timeout": max(1, round(busy_timeout))},
                open=False,
            )
            with _quiet("psycopg.pool"):  # a start-up fault is one line; the pool would log every failed attempt
                self._pool.open(wait=True, timeout=busy_timeout)
        except Exception as exc:  # psycopg_pool raises PoolTimeout, psycopg OperationalError: one message either way
            self._pool.close()
            raise LogUnavailable(f"decision log {self.where}: cannot connect ({type(exc).__name__})") from exc

    def ddl(self) -> list[str]:
        return self._tables("DOUBLE PRECISION", "BIGINT", "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")

    def lock_schema(self, session: Session) -> None:
        session.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))

    def columns(self, session: Session, table: str) -> set[str]:
        rows = session.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
        return {r[0] for r in rows.fetchall()}

    def run(self, work: Callable[[Session], Any], *, write: bool) -> Any:
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection(timeout=self._timeout) as conn, conn.transaction():
                return work(_PgSession(conn))
        except self._unique as exc:
            raise DuplicateRow(str(exc)) from exc
        except (*self._errors, PoolTimeout) as exc:
            raise LogUnavailable(f"decision log unavailable: {self.where}: {type(exc).__name__}") from exc

    @contextlib.contextmanager
    def learner_lock(self) -> Iterator[bool]:
        """A session-level advisory lock on a dedicated connection: the server drops it when that connection ends,
        which a killed process's does."""
        import psycopg

        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, round(self._timeout)))
        except psycopg.OperationalError as exc:
            raise LogUnavailable(f"decision log {self.where}: cannot connect ({type(exc).__name__})") from exc
        with conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEARNER_LOCK,)).fetchone()
            yield bool(row and row[0])

    def close(self) -> None:
        self._pool.close()


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Keep ``logger`` to errors while the block runs."""
    import logging

    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def open_store(location: str | Path, durability: Durability = "full", *, busy_timeout: float = 5.0) -> Store:
    """A PostgreSQL store for a ``postgresql://`` (or ``postgres://``) URL, else a SQLite file at ``location``."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text, busy_timeout=busy_timeout)
    return SqliteStore(text, durability, busy_timeout=busy_timeout)
