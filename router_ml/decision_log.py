"""The durable log of routing decisions and their feedback: SQLite in WAL mode, one commit per write.

Why SQLite: a single file beside the service, transactions, a ``UNIQUE`` constraint that makes a second
feedback for one decision impossible, and WAL mode, where a committed transaction survives the process
being killed at any instant (it is in the WAL file before ``commit`` returns). With ``synchronous=FULL``
(the default) it also survives power loss, at one fsync per commit; ``normal`` drops that fsync.

Every decision row is what the policy knew when it chose: the prompt, the offered candidates, the
sampled model and the probability it was sampled with. :meth:`DecisionLog.export` turns decisions
and feedback into the logged-traffic table (:mod:`router_ml.contracts`) that ``router-ml train`` reads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import polars as pl

from router_ml.atomic import atomic_write_with
from router_ml.contracts import validate_logs

Durability = Literal["full", "normal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    tenant TEXT,
    prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    propensity REAL NOT NULL,
    candidates TEXT NOT NULL,
    distribution TEXT NOT NULL,
    lam REAL NOT NULL,
    policy_version TEXT NOT NULL,
    est_cost_usd REAL NOT NULL,
    answered_by TEXT,
    cost_usd REAL,
    input_tokens INTEGER,
    output_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(decision_id),
    received_at REAL NOT NULL,
    quality REAL NOT NULL,
    cost_usd REAL
);
"""


class UnknownDecision(KeyError):
    """Feedback names a decision id the log has never seen."""


class DuplicateFeedback(ValueError):
    """The decision already has its feedback; a decision is graded once."""


@dataclass(frozen=True)
class DecisionRecord:
    """One routing decision as logged."""

    decision_id: str
    created_at: float
    tenant: str | None
    prompt: str
    model: str
    propensity: float
    candidates: tuple[str, ...]
    distribution: dict[str, float]
    lam: float
    policy_version: str
    est_cost_usd: float


@dataclass(frozen=True)
class GradedDecision:
    """A decision joined with its feedback: what the online learner learns from.

    ``cost_usd`` is the feedback's cost, else the upstream's metered cost, else the estimate made at
    decision time. ``answered_by`` differs from ``model`` when a fallback answered; such outcomes are
    not the sampled model's and are not learned from.
    """

    seq: int
    decision_id: str
    prompt: str
    model: str
    propensity: float
    candidates: tuple[str, ...]
    quality: float
    cost_usd: float
    answered_by: str | None
    created_at: float
    received_at: float

    @property
    def learnable(self) -> bool:
        """True when the outcome belongs to the sampled model."""
        return self.answered_by is None or self.answered_by == self.model


def new_decision_id() -> str:
    """A random, unguessable decision id."""
    return uuid.uuid4().hex


class DecisionLog:
    """Decisions and feedback in one SQLite file. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | Path, durability: Durability = "full") -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"decision log: 'durability' must be 'full' or 'normal', got {durability!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        self._db.executescript(_SCHEMA)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))
            self.log_id: str = self._db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]

    def close(self) -> None:
        """Close the connection (every write is already committed)."""
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------------------
    def record_decision(self, d: DecisionRecord) -> None:
        """Commit one decision; returns once it is durable."""
        with self._lock:
            self._db.execute(
                "INSERT INTO decisions (decision_id, created_at, tenant, prompt, model, propensity, candidates,"
                " distribution, lam, policy_version, est_cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.decision_id,
                    d.created_at,
                    d.tenant,
                    d.prompt,
                    d.model,
                    d.propensity,
                    json.dumps(list(d.candidates)),
                    json.dumps(d.distribution),
                    d.lam,
                    d.policy_version,
                    d.est_cost_usd,
                ),
            )

    def record_usage(
        self, decision_id: str, answered_by: str, cost_usd: float, input_tokens: int, output_tokens: int
    ) -> None:
        """Commit what an upstream call metered: the model that answered, its tokens and cost."""
        with self._lock:
            self._db.execute(
                "UPDATE decisions SET answered_by = ?, cost_usd = ?, input_tokens = ?, output_tokens = ?"
                " WHERE decision_id = ?",
                (answered_by, cost_usd, input_tokens, output_tokens, decision_id),
            )

    def record_feedback(self, decision_id: str, quality: float, cost_usd: float | None = None) -> GradedDecision:
        """Commit the feedback of one decision and return the decision joined with it.

        Raises :class:`UnknownDecision` or :class:`DuplicateFeedback`; neither writes anything.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone() is None:
                    raise UnknownDecision(f"no decision with id '{decision_id}'")
                try:
                    self._db.execute(
                        "INSERT INTO feedback (decision_id, received_at, quality, cost_usd) VALUES (?, ?, ?, ?)",
                        (decision_id, time.time(), quality, cost_usd),
                    )
                except sqlite3.IntegrityError as exc:
                    raise DuplicateFeedback(f"decision '{decision_id}' already has feedback") from exc
                row = self._db.execute(_GRADED + " WHERE f.decision_id = ?", (decision_id,)).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return _graded(row)

    def mark(self, key: str) -> int:
        """The feedback sequence number stored under ``key``, storing the current one the first time."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES (?, (SELECT coalesce(max(seq), 0) FROM feedback))", (key,)
            )
            return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- reads ----------------------------------------------------------------------------------
    def graded_since(self, seq: int) -> Iterator[GradedDecision]:
        """Feedback committed after feedback sequence number ``seq``, in commit order (for catching up)."""
        with self._lock:
            rows = self._db.execute(_GRADED + " WHERE f.seq > ? ORDER BY f.seq", (seq,)).fetchall()
        return (_graded(r) for r in rows)

    def counts(self) -> dict[str, int]:
        """Numbers of decisions and of feedback rows."""
        with self._lock:
            n_dec = self._db.execute("SELECT count(*) FROM decisions").fetchone()[0]
            n_fb = self._db.execute("SELECT count(*) FROM feedback").fetchone()[0]
        return {"decisions": int(n_dec), "feedback": int(n_fb)}

    def last_feedback_seq(self) -> int:
        """The sequence number of the newest feedback (0 when none)."""
        with self._lock:
            return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM feedback").fetchone()[0])

    def spend(self, by: Literal["model", "tenant"]) -> dict[str, float]:
        """Metered spend in USD (feedback cost, else upstream cost, else the decision-time estimate)."""
        column = "coalesce(nullif(d.answered_by, ''), d.model)" if by == "model" else "coalesce(d.tenant, '')"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {column}, sum({_COST}) FROM decisions d LEFT JOIN feedback f USING (decision_id)"
                f" GROUP BY 1 ORDER BY 1"
            ).fetchall()
        return {str(k): float(v) for k, v in rows}

    def to_frame(self, *, include_fallback: bool = False) -> pl.DataFrame:
        """Decisions and feedback as the logged-traffic table (ungraded decisions have null quality).

        Decisions a fallback answered are left out unless ``include_fallback``: their outcome is not the
        sampled model's.
        """
        where = "" if include_fallback else " WHERE d.answered_by IS NULL OR d.answered_by = d.model"
        with self._lock:
            rows = self._db.execute(
                "SELECT d.decision_id, d.created_at, d.prompt, d.model, d.candidates, d.propensity, f.quality,"
                f" {_COST}, d.policy_version, d.tenant, d.lam, d.answered_by"
                " FROM decisions d LEFT JOIN feedback f USING (decision_id)" + where + " ORDER BY d.seq"
            ).fetchall()
        cols: list[tuple[Any, ...]] = list(zip(*rows)) if rows else [() for _ in range(12)]
        frame = pl.DataFrame(
            {
                "event_id": pl.Series(cols[0], dtype=pl.String),
                "timestamp": pl.Series([_utc(t) for t in cols[1]], dtype=pl.Datetime("us")),
                "prompt": pl.Series(cols[2], dtype=pl.String),
                "model": pl.Series(cols[3], dtype=pl.String),
                "candidates": pl.Series([json.loads(c) for c in cols[4]], dtype=pl.List(pl.String)),
                "propensity": pl.Series(cols[5], dtype=pl.Float64),
                "quality": pl.Series(cols[6], dtype=pl.Float64),
                "cost_usd": pl.Series(cols[7], dtype=pl.Float64),
                "policy_version": pl.Series(cols[8], dtype=pl.String),
                "tenant": pl.Series(cols[9], dtype=pl.String),
                "lam": pl.Series(cols[10], dtype=pl.Float64),
                "answered_by": pl.Series(cols[11], dtype=pl.String),
            }
        )
        return frame

    def export(self, path: str | Path, *, include_fallback: bool = False) -> pl.DataFrame:
        """Write the logged-traffic Parquet file ``router-ml train`` reads (validated, written atomically)."""
        frame = validate_logs(self.to_frame(include_fallback=include_fallback), f"decision log {self.path}")
        atomic_write_with(path, lambda tmp: frame.write_parquet(tmp))
        return frame


_COST = "coalesce(f.cost_usd, d.cost_usd, d.est_cost_usd)"
_GRADED = (
    "SELECT f.seq, d.decision_id, d.prompt, d.model, d.propensity, d.candidates, f.quality,"
    f" {_COST}, d.answered_by, d.created_at, f.received_at"
    " FROM feedback f JOIN decisions d USING (decision_id)"
)


def _graded(row: Sequence[Any]) -> GradedDecision:
    return GradedDecision(
        seq=int(row[0]),
        decision_id=str(row[1]),
        prompt=str(row[2]),
        model=str(row[3]),
        propensity=float(row[4]),
        candidates=tuple(json.loads(row[5])),
        quality=float(row[6]),
        cost_usd=float(row[7]),
        answered_by=row[8],
        created_at=float(row[9]),
        received_at=float(row[10]),
    )


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None)
