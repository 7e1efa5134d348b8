"""The durable log of routing decisions and their feedback, one commit per write, in SQLite or PostgreSQL.

Why SQLite by default: a single file beside the service, transactions, a ``UNIQUE`` constraint that makes a
second feedback for one decision impossible, and WAL mode, where a committed transaction survives the process
being killed at any instant (it is in the WAL file before ``commit`` returns). With ``synchronous=FULL``
(the default) it also survives power loss, at one fsync per commit; ``normal`` drops that fsync. Router replicas
that share one log use PostgreSQL (:mod:`router_ml.log_store`): the same statements, the same guarantees (a
decision is committed before its answer leaves; the unique constraint lets one replica accept a grade; feedback
sequence numbers are assigned in commit order, so the single learner reads them in order).

Every decision row is what the policy knew when it chose: the prompt, the offered candidates, the
sampled model and the probability it was sampled with, and the tenant whose key asked. A forwarded call
(chat completions) also records its ``outcome`` (``forwarding`` until it ends, then ``answered``, ``cut``:
the upstream broke off after the first byte, ``disconnected``: the client left, ``failed``: no upstream
answered, or ``interrupted``: the service stopped mid-call) with the model that answered and what it cost.

Whose cost counts: the cost the service metered for a call it forwarded; a client-reported cost (the
feedback's ``cost_usd``) only for a route-only decision, within the bound the caller passes, and kept apart
in the ``feedback`` table. A write the disk refuses (full, read-only, locked past the busy timeout, I/O)
raises :class:`LogUnavailable` and sets :attr:`DecisionLog.fault` until a write succeeds again.

:meth:`DecisionLog.export` turns decisions and feedback into the logged-traffic table (:mod:`router_ml.contracts`)
that ``router-ml train`` reads.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl

from router_ml.atomic import atomic_write_with
from router_ml.contracts import validate_logs
from router_ml.errors import InvalidInput, UnknownName
from router_ml.log_store import DuplicateRow, Durability, LogUnavailable, Session, Store, open_store

Outcome = Literal["answered", "cut", "disconnected", "failed"]
GradeSource = Literal["client", "judge", "check"]
"""Who graded a decision: the client (``POST /v1/feedback``), an LLM judge, or a check of the answer."""
JobEnd = Literal["failed", "superseded"]
CostBound = Callable[[str, str], float]
"""``(model, prompt) -> USD``: the most a call of ``model`` on ``prompt`` can cost."""
T = TypeVar("T")

class UnknownDecision(UnknownName):
    """Feedback names a decision id the log has never seen."""


class DuplicateFeedback(InvalidInput):
    """The decision already has its feedback; a decision is graded once."""


class AnswerInFlight(InvalidInput):
    """The decision's forwarded call has not ended yet, so its metered cost is not known."""


class ClientCostRefused(InvalidInput):
    """A client-reported cost is not accepted for this decision; the message names ``cost_usd`` and why."""


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
    forwarded: bool = False


@dataclass(frozen=True)
class GradedDecision:
    """A decision joined with its feedback: what the online learner learns from.

    ``cost_usd`` is the upstream's metered cost, else the feedback's (client-reported) cost, else the
    estimate made at decision time. ``answered_by`` differs from ``model`` when a fallback answered; such outcomes are
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


@dataclass(frozen=True)
class NewGradeJob:
    """A grade job recorded with a forwarded call's outcome: ``answer`` (and ``reference``) to grade, kept until the
    job ends; or, when ``skipped`` gives the reason (the judging spend cap), a sampled decision left ungraded."""

    grader: str
    answer: str | None
    reference: str | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class GradeJob:
    """A pending grade job as the grading worker claims it."""

    decision_id: str
    prompt: str
    model: str
    answer: str
    reference: str | None
    attempts: int
    grader: str


def new_decision_id() -> str:
    """A random, unguessable decision id."""
    return uuid.uuid4().hex


class DecisionLog:
    """Decisions and feedback in a SQLite file or a PostgreSQL database (``location``: a path or a
    ``postgresql://`` URL). Thread-safe."""

    def __init__(self, location: str | Path, durability: Durability = "full", *, busy_timeout: float = 5.0) -> None:
        if durability not in ("full", "normal"):
            raise InvalidInput(f"decision log: 'durability' must be 'full' or 'normal', got {durability!r}")
        self.fault: str | None = None
        self._store: Store = open_store(location, durability, busy_timeout=busy_timeout)
        self.where = self._store.where
        try:
            self.log_id: str = self._store.migrate()
        except LogUnavailable:
            self._store.close()
            raise

    @property
    def store(self) -> Store:
        """The database the log lives in."""
        return self._store

    def close(self) -> None:
        """Close the connections (every write is already committed)."""
        self._store.close()

    def _run(self, work: Callable[[Session], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction (if it writes); faults raise :class:`LogUnavailable` and set :attr:`fault`
        until a write succeeds again."""
        try:
            result: T = self._store.run(work, write=write)
        except LogUnavailable as exc:
            self.fault = str(exc).removeprefix("decision log unavailable: ")
            raise
        if write:
            self.fault = None
        return result

    # -- writes ---------------------------------------------------------------------------------
    def record_decision(self, d: DecisionRecord) -> None:
        """Commit one decision; returns once it is durable."""
        self._run(
            lambda db: db.execute(
                "INSERT INTO decisions (decision_id, created_at, tenant, prompt, model, propensity, candidates,"
                " distribution, lam, policy_version, est_cost_usd, outcome)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    "forwarding" if d.forwarded else None,
                ),
            )
        )

    def record_usage(
        self,
        decision_id: str,
        answered_by: str,
        cost_usd: float,
        input_tokens: int,
        output_tokens: int,
        outcome: Outcome = "answered",
        job: NewGradeJob | None = None,
    ) -> None:
        """Commit how a forwarded call ended: the model that answered (``""``: none), its tokens and cost; and, in the
        same transaction, the decision's grade job if it was sampled for grading."""

        def work(db: Session) -> None:
            db.execute(
                "UPDATE decisions SET answered_by = ?, cost_usd = ?, input_tokens = ?, output_tokens = ?, outcome = ?"
                " WHERE decision_id = ?",
                (answered_by, cost_usd, input_tokens, output_tokens, outcome, decision_id),
            )
            if job is not None:
                now = time.time()
                db.execute(
                    "INSERT INTO grade_jobs (decision_id, created_at, state, grader, answer, reference, next_at,"
                    " reason, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        decision_id,
                        now,
                        "skipped" if job.skipped else "pending",
                        job.grader,
                        None if job.skipped else job.answer,
                        None if job.skipped else job.reference,
                        now,
                        job.skipped,
                        now if job.skipped else None,
                    ),
                )

        self._run(work)

    def interrupted(self) -> int:
        """Mark the calls still ``forwarding`` as ``interrupted`` (at start-up: the service stopped mid-call). No model
        is recorded as having answered them, so their grades are kept but not learned from."""
        changed: int = self._run(
            lambda db: db.execute(
                "UPDATE decisions SET outcome = 'interrupted', answered_by = '' WHERE outcome = 'forwarding'"
            ).rowcount
        )
        return changed

    def record_feedback(
        self,
        decision_id: str,
        quality: float,
        cost_usd: float | None = None,
        *,
        tenant: str | None = None,
        cost_bound: CostBound | None = None,
        source: GradeSource = "client",
        grader: str | None = None,
        grading_cost_usd: float = 0.0,
    ) -> GradedDecision:
        """Commit the feedback of one decision and return the decision joined with it.

        With ``tenant``, a decision of another tenant is unknown. A ``cost_usd`` is refused for a forwarded
        call (its metered cost counts) and above ``cost_bound(model, prompt)``. Raises :class:`UnknownDecision`,
        :class:`DuplicateFeedback`, :class:`AnswerInFlight` or :class:`ClientCostRefused`; none writes anything.

        ``source`` and ``grader`` (its name and version, or for a client the mapping used) are stored with the grade.
        The first grade of a decision wins: a client's grade ends the decision's pending grade job (``superseded``);
        a judge's or check's ends it ``done`` with what judging cost (``grading_cost_usd``), in the same transaction,
        and drops the answer kept for it.
        """

        def work(db: Session) -> Sequence[Any]:
            db.serialize()  # feedback sequence numbers in commit order: the learner reads them in that order
            found = db.execute(
                "SELECT tenant, outcome, model, prompt FROM decisions WHERE decision_id = ?", (decision_id,)
            ).fetchone()
            if found is None or (tenant is not None and found[0] != tenant):
                raise UnknownDecision(f"no decision with id '{decision_id}'")
            outcome, model, prompt = found[1:]
            if outcome == "forwarding":
                raise AnswerInFlight(f"decision '{decision_id}' is still being answered; grade it when the answer ends")
            if cost_usd is not None and outcome is not None:
                raise ClientCostRefused(
                    "'cost_usd': the service forwarded this call and metered its cost; send the grade without cost_usd"
                )
            if cost_usd is not None and cost_bound is not None and cost_usd > (bound := cost_bound(model, prompt)):
                raise ClientCostRefused(
                    f"'cost_usd': {cost_usd} USD is more than '{model}' can cost for this prompt (at most {bound:.6g})"
                )
            if db.execute("SELECT 1 FROM feedback WHERE decision_id = ?", (decision_id,)).fetchone() is not None:
                raise DuplicateFeedback(f"decision '{decision_id}' already has feedback")
            now = time.time()
            db.execute(
                "INSERT INTO feedback (decision_id, received_at, quality, cost_usd, source, grader)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (decision_id, now, quality, cost_usd, source, grader),
            )
            _end_job(
                db, decision_id, "superseded" if source == "client" else "done", None, grading_cost_usd, now,
                attempt=source != "client",
            )
            row: Sequence[Any] = db.execute(_GRADED + " WHERE f.decision_id = ?", (decision_id,)).fetchone()
            return row

        try:
            return _graded(self._run(work))
        except DuplicateRow as exc:  # a race the check above lost: the constraint still allows one grade
            raise DuplicateFeedback(f"decision '{decision_id}' already has feedback") from exc

    # -- grade jobs -------------------------------------------------------------------------------
    def claim_jobs(self, now: float, lease_seconds: float, limit: int) -> list[GradeJob]:
        """Up to ``limit`` pending jobs that are due and unclaimed (or whose claim lapsed), claimed for
        ``lease_seconds``; a job another process claimed first is not returned."""

        def work(db: Session) -> list[GradeJob]:
            rows = db.execute(
                "SELECT j.decision_id, d.prompt, d.model, j.answer, j.reference, j.attempts, j.grader"
                " FROM grade_jobs j JOIN decisions d USING (decision_id)"
                " WHERE j.state = 'pending' AND j.next_at <= ? AND (j.claimed_until IS NULL OR j.claimed_until < ?)"
                " ORDER BY j.next_at LIMIT ?",
                (now, now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                taken = db.execute(
                    "UPDATE grade_jobs SET claimed_until = ? WHERE decision_id = ? AND state = 'pending'"
                    " AND (claimed_until IS NULL OR claimed_until < ?)",
                    (now + lease_seconds, row[0], now),
                ).rowcount
                if taken == 1:
                    claimed.append(GradeJob(str(row[0]), str(row[1]), str(row[2]), str(row[3]), row[4], int(row[5]),
                                            str(row[6])))
            return claimed

        return self._run(work)

    def retry_job(self, decision_id: str, next_at: float, reason: str, cost_usd: float = 0.0) -> None:
        """Count a failed attempt (its reason and what it cost) and leave the job pending until ``next_at``."""
        self._run(
            lambda db: db.execute(
                "UPDATE grade_jobs SET attempts = attempts + 1, next_at = ?, claimed_until = NULL, reason = ?,"
                " cost_usd = cost_usd + ? WHERE decision_id = ? AND state = 'pending'",
                (next_at, reason, cost_usd, decision_id),
            )
        )

    def end_job(self, decision_id: str, state: JobEnd, reason: str | None, cost_usd: float = 0.0) -> None:
        """End a pending job without a grade (``failed`` with its reason, or ``superseded`` by a client's grade) and
        drop its answer; what the last attempt cost is added either way."""
        self._run(lambda db: _end_job(db, decision_id, state, reason, cost_usd, time.time(), attempt=True))

    def release_claims(self) -> int:
        """Forget every claim (at start-up of the one process that grades: a killed one's claims are void)."""
        released: int = self._run(
            lambda db: db.execute(
                "UPDATE grade_jobs SET claimed_until = NULL WHERE state = 'pending' AND claimed_until IS NOT NULL"
            ).rowcount
        )
        return released

    def pending_requests(self) -> list[tuple[str, str, str | None]]:
        """``(prompt, answer, reference)`` of every pending grade job (at start-up: what they may still cost)."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT d.prompt, j.answer, j.reference FROM grade_jobs j JOIN decisions d USING (decision_id)"
                " WHERE j.state = 'pending'"
            ).fetchall(),
            write=False,
        )
        return [(str(p), str(a), r) for p, a, r in rows]

    def pending_jobs(self) -> int:
        """How many grade jobs are pending (an index on the state keeps this cheap)."""
        return self._run(
            lambda db: int(db.execute("SELECT count(*) FROM grade_jobs WHERE state = 'pending'").fetchone()[0]),
            write=False,
        )

    def grading_spend(self, tenant: str | None = None) -> dict[str, float]:
        """What grading cost in USD per grader (name and version), optionally for one tenant's decisions."""
        where, args = (" WHERE d.tenant = ?", (tenant,)) if tenant is not None else ("", ())
        rows = self._run(
            lambda db: db.execute(
                "SELECT j.grader, sum(j.cost_usd) FROM grade_jobs j JOIN decisions d USING (decision_id)"
                f"{where} GROUP BY 1 ORDER BY 1",
                args,
            ).fetchall(),
            write=False,
        )
        return {str(k): float(v) for k, v in rows if v}

    def mark(self, key: str) -> int:
        """The feedback sequence number stored under ``key``, storing the current one the first time."""

        def work(db: Session) -> int:
            db.execute(
                "INSERT INTO meta VALUES (?, CAST((SELECT coalesce(max(seq), 0) FROM feedback) AS TEXT))"
                " ON CONFLICT (key) DO NOTHING",
                (key,),
            )
            return int(db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

        return self._run(work)

    def probe(self) -> str | None:
        """Try a small write now: None when the log takes writes, else the fault (for a readiness check)."""
        with contextlib.suppress(LogUnavailable):
            self._run(
                lambda db: db.execute(
                    "INSERT INTO meta VALUES ('probe', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(time.time()),),
                )
            )
        return self.fault

    # -- reads ----------------------------------------------------------------------------------
    def graded_since(self, seq: int) -> Iterator[GradedDecision]:
        """Feedback committed after feedback sequence number ``seq``, in commit order (for catching up)."""
        rows = self._run(
            lambda db: db.execute(_GRADED + " WHERE f.seq > ? ORDER BY f.seq", (seq,)).fetchall(), write=False
        )
        return (_graded(r) for r in rows)

    def counts(self) -> dict[str, int]:
        """Numbers of decisions and of feedback rows."""

        def work(db: Session) -> dict[str, int]:
            n_dec = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
            n_fb = db.execute("SELECT count(*) FROM feedback").fetchone()[0]
            return {"decisions": int(n_dec), "feedback": int(n_fb)}

        return self._run(work, write=False)

    def last_feedback_seq(self) -> int:
        """The sequence number of the newest feedback (0 when none)."""
        return self._run(
            lambda db: int(db.execute("SELECT coalesce(max(seq), 0) FROM feedback").fetchone()[0]), write=False
        )

    def spend(self, by: Literal["model", "tenant", "source"], tenant: str | None = None) -> dict[str, float]:
        """Spend in USD per model, tenant or cost source (``metered``, ``client``, ``estimate``), optionally of one
        tenant: the metered cost, else the client-reported one, else the decision-time estimate."""
        column = {
            "model": "coalesce(nullif(d.answered_by, ''), d.model)",
            "tenant": "coalesce(d.tenant, '')",
            "source": _SOURCE,
        }[by]
        where, args = (" WHERE d.tenant = ?", (tenant,)) if tenant is not None else ("", ())
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {column}, sum({_COST}) FROM decisions d LEFT JOIN feedback f USING (decision_id)"
                f"{where} GROUP BY 1 ORDER BY 1",
                args,
            ).fetchall(),
            write=False,
        )
        return {str(k): float(v) for k, v in rows}

    def to_frame(self, *, include_fallback: bool = False) -> pl.DataFrame:
        """Decisions and feedback as the logged-traffic table (ungraded decisions have null quality); who graded
        each decision is in ``grade_source`` (client, judge, check) and ``grader``.

        Decisions a fallback answered are left out unless ``include_fallback``: their outcome is not the
        sampled model's.
        """
        where = "" if include_fallback else " WHERE d.answered_by IS NULL OR d.answered_by = d.model"
        rows = self._run(
            lambda db: db.execute(
                "SELECT d.decision_id, d.created_at, d.prompt, d.model, d.candidates, d.propensity, f.quality,"
                f" {_COST}, d.policy_version, d.tenant, d.lam, d.answered_by, f.source, f.grader"
                " FROM decisions d LEFT JOIN feedback f USING (decision_id)" + where + " ORDER BY d.seq"
            ).fetchall(),
            write=False,
        )
        cols: list[tuple[Any, ...]] = list(zip(*rows)) if rows else [() for _ in range(14)]
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
                "grade_source": pl.Series(cols[12], dtype=pl.String),
                "grader": pl.Series(cols[13], dtype=pl.String),
            }
        )
        return frame

    def export(self, path: str | Path, *, include_fallback: bool = False) -> pl.DataFrame:
        """Write the logged-traffic Parquet file ``router-ml train`` reads (validated, written atomically)."""
        frame = validate_logs(self.to_frame(include_fallback=include_fallback), f"decision log {self.where}")
        atomic_write_with(path, lambda tmp: frame.write_parquet(tmp))
        return frame


_COST = "coalesce(d.cost_usd, f.cost_usd, d.est_cost_usd)"
_SOURCE = (
    "CASE WHEN d.cost_usd IS NOT NULL THEN 'metered' WHEN f.cost_usd IS NOT NULL THEN 'client' ELSE 'estimate' END"
)
_GRADED = (
    "SELECT f.seq, d.decision_id, d.prompt, d.model, d.propensity, d.candidates, f.quality,"
    f" {_COST}, d.answered_by, d.created_at, f.received_at"
    " FROM feedback f JOIN decisions d USING (decision_id)"
)


def _end_job(
    db: Session, decision_id: str, state: str, reason: str | None, cost: float, now: float, *, attempt: bool
) -> None:
    """End the decision's job if it is pending (answer and reference dropped); add ``cost``, and one attempt if one
    was made, whatever its state."""
    db.execute(
        "UPDATE grade_jobs SET cost_usd = cost_usd + ?, attempts = attempts + ?,"
        " state = CASE WHEN state = 'pending' THEN ? ELSE state END,"
        " reason = CASE WHEN state = 'pending' THEN ? ELSE reason END,"
        " ended_at = CASE WHEN state = 'pending' THEN ? ELSE ended_at END,"
        " answer = NULL, reference = NULL, claimed_until = NULL WHERE decision_id = ?",
        (cost, int(attempt), state, reason, now, decision_id),
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
    return datetime.fromtimestamp(ts, tz=UTC).replace(tzinfo=None)
