"""``router-ml grade --logs``: grade the ungraded rows of a logged-traffic file, so it can be trained on.

The input is a logged-traffic Parquet file (:func:`router_ml.contracts.load_logs`) with an ``answer`` column: the
decision log keeps no answers, so the user joins them in. An optional ``reference`` column feeds reference checks
and the judge. Rows whose ``quality`` is null and whose ``answer`` is not are graded; the output is the same table
(every column kept, in order) with ``quality`` filled in and four columns added (:data:`GRADE_COLUMNS`):

==================  =========================================================================================
``grade_source``    ``judge`` or ``check`` for a row graded here; ``logged`` (or the input's own value) for a
                    row that came graded; null for a row that failed or had no answer
``grader``          ``name:version`` of the grader that graded, or tried to grade, the row
``grade_detail``    the judge's rationale or the check's finding; ``failed after N attempts: <reason>`` for a
                    failed row; ``no answer`` for a skipped one
``grade_cost_usd``  what grading the row cost in the run that graded (or failed) it, failed attempts too
==================  =========================================================================================

A failed row keeps its null quality, so ``router-ml train`` skips it. The output is written atomically, and may be
the input itself (grading in place).

Progress is kept as it goes in ``<output>.progress`` (:mod:`serve.grade_progress`), a SQLite file holding each
graded row's event id, quality, detail and cost: answers and prompts are only read from the input, never stored
anywhere else. Rerunning the same command after an interruption (Ctrl-C, ``kill -9``) grades only what is not there,
and pays for nothing twice but the answers that were in flight. The file is removed when every row is graded; while
rows failed it stays, so the same command retries only those. An output that exists without a progress file is a
finished run's, and is not graded over (which would pay for every row again) unless ``restart`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from router_ml.atomic import atomic_write_with
from router_ml.contracts import DataValidationError, load_logs
from router_ml.errors import InvalidInput
from serve.grade_batch import BatchGrading, Outcome, Tally, grade_many, jobs_of, with_answers
from serve.grade_progress import GradeProgress, SavedGrade, file_digest, progress_path

GRADE_COLUMNS: dict[str, pl.DataType] = {
    "grade_source": pl.String(),
    "grader": pl.String(),
    "grade_detail": pl.String(),
    "grade_cost_usd": pl.Float64(),
}
"""The columns the output adds (or keeps, if the input has them)."""
_UPDATES = {
    "event_id": pl.String,
    "_quality": pl.Float64,
    "_source": pl.String,
    "_detail": pl.String,
    "_cost": pl.Float64,
}
LOGGED = "logged"
"""The ``grade_source`` of a row that was graded before (by a client's feedback or the service's grader)."""
NO_ANSWER = "no answer"


@dataclass(frozen=True)
class LogGrading:
    """What a run did: rows graded (``resumed`` of them from an interrupted run), failed, skipped for want of an
    answer, and already graded in the input; what this run paid; the tally of its jobs (with failure reasons)."""

    graded: int
    resumed: int
    failed: int
    skipped: int
    already: int
    tally: Tally
    output: Path
    progress: Path | None

    def summary(self) -> str:
        """One line: graded / failed / skipped, the spend, the output."""
        resumed = f" ({self.resumed} kept from an interrupted run)" if self.resumed else ""
        return (
            f"graded {self.graded}{resumed}, failed {self.failed}, skipped {self.skipped} (no answer), "
            f"{self.already} graded before; grading spend ${self.tally.spend_usd:.4f} this run; wrote {self.output}"
        )


def grade_logs(
    logs: Path, output: Path, batch: BatchGrading, *, restart: bool = False, progress: bool | None = None
) -> LogGrading:
    """Grade the ungraded rows of ``logs`` with ``batch`` and write the table to ``output`` (see the module)."""
    what = f"logs {logs}"
    frame = with_answers(load_logs(logs), what, batch.grader.name)
    for column, dtype in GRADE_COLUMNS.items():
        if column in frame.columns and frame.schema[column] not in (dtype, pl.Null()):
            raise DataValidationError(what, column, f"must be {dtype}, got {frame.schema[column]}")
    ungraded = frame.filter(pl.col("quality").is_null())
    todo = ungraded.filter(pl.col("answer").is_not_null())
    in_place = output.resolve() == logs.resolve()
    if output.exists() and not in_place and not restart and not progress_path(output).exists():
        raise InvalidInput(
            f"grade: {output} exists and no run of it is unfinished; to grade what it left ungraded, grade it in "
            f"place (--logs {output} -o {output}); to grade {logs} again from the start, pass --restart"
        )
    sidecar = GradeProgress(
        progress_path(output), input_digest=file_digest(logs), grader=batch.grader_id, restart=restart
    )
    try:
        saved = sidecar.saved()
        jobs = jobs_of(todo.filter(~pl.col("event_id").is_in(list(saved))), "event_id")
        tally, failures = Tally(), dict[str, Outcome]()
        for outcome in grade_many(batch, jobs, tally, total=todo.height - len(saved), desc="grading"):
            if outcome.quality is None:
                failures[outcome.key] = outcome
            else:
                saved[outcome.key] = SavedGrade(outcome.quality, outcome.detail, outcome.cost_usd)
                sidecar.save(outcome.key, saved[outcome.key])
        updates = pl.DataFrame(
            {
                "event_id": [*saved, *failures],
                "_quality": [g.quality for g in saved.values()] + [None] * len(failures),
                "_source": [batch.source] * len(saved) + [None] * len(failures),
                "_detail": [g.detail for g in saved.values()] + [f.detail for f in failures.values()],
                "_cost": [g.cost_usd for g in saved.values()] + [f.cost_usd for f in failures.values()],
            },
            schema=_UPDATES,
        )
        graded = _graded_frame(frame, updates, batch.grader_id)
        atomic_write_with(output, lambda tmp: graded.write_parquet(tmp))
    except BaseException:
        sidecar.close()
        raise
    if failures and not in_place:
        sidecar.close()
    else:  # every row graded (or the output, graded in place, now holds every grade and is the next input)
        sidecar.remove()
    n_resumed = len(saved) - tally.graded
    return LogGrading(
        graded=len(saved),
        resumed=n_resumed,
        failed=len(failures),
        skipped=ungraded.height - todo.height,
        already=frame.height - ungraded.height,
        tally=tally,
        output=output,
        progress=sidecar.path if failures and not in_place else None,
    )


def _graded_frame(frame: pl.DataFrame, updates: pl.DataFrame, grader_id: str) -> pl.DataFrame:
    """``frame`` with the grades of ``updates`` (keyed by event id) and the :data:`GRADE_COLUMNS` filled in."""
    existing = {
        c: (pl.col(c).cast(dtype) if c in frame.columns else pl.lit(None, dtype)) for c, dtype in GRADE_COLUMNS.items()
    }
    was_graded = pl.col("quality").is_not_null()
    tried = pl.col("_detail").is_not_null()  # graded or failed here
    joined = frame.with_row_index("_row").join(updates, on="event_id", how="left").sort("_row")
    return joined.with_columns(
        quality=pl.coalesce("quality", "_quality"),
        grade_source=pl.when(was_graded).then(existing["grade_source"].fill_null(LOGGED)).otherwise(pl.col("_source")),
        grader=pl.when(was_graded)
        .then(existing["grader"])
        .when(tried)
        .then(pl.lit(grader_id))
        .otherwise(pl.lit(None, pl.String)),
        grade_detail=pl.when(was_graded)
        .then(existing["grade_detail"])
        .when(tried)
        .then(pl.col("_detail"))
        .otherwise(pl.lit(NO_ANSWER)),
        grade_cost_usd=pl.when(was_graded).then(existing["grade_cost_usd"]).otherwise(pl.col("_cost")),
    ).drop("_row", "_quality", "_source", "_detail", "_cost")
