"""``router-ml grade --agreement``: how far a grader can be trusted, measured against a benchmark's known qualities.

The benchmark (:func:`router_ml.contracts.load_benchmark`) must carry each row's ``answer`` (and may carry a
``reference``); a row without an answer is left out. Every row, or a seeded sample of ``limit`` rows, is graded as
``router-ml grade --logs`` grades (:mod:`serve.grade_batch`: the same retries and concurrency), and the grades are
compared with the known qualities by :func:`router_ml.graders.agreement`: the share of answers both call good or
both call bad at ``threshold``, Pearson's correlation, and the bias (graded minus known) overall and per model.
Answers are only read; a run keeps no progress (it is meant for a sample of a few hundred answers).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from router_ml.contracts import load_benchmark
from router_ml.errors import InvalidInput
from router_ml.graders import Agreement, agreement
from serve.grade_batch import BatchGrading, Tally, grade_many, jobs_of, with_answers


@dataclass(frozen=True)
class AgreementReport:
    """The grader (``name:version``), the benchmark, the figures (None when fewer than 2 answers could be graded),
    how many answers of each model were graded, and the tally of the jobs (spend, failure reasons)."""

    grader: str
    benchmark: Path
    rows: int
    figures: Agreement | None
    graded_by_model: dict[str, int]
    tally: Tally

    def table(self) -> str:
        """The report as an aligned plain-text table."""
        head = (
            f"{self.grader} on {self.benchmark}: {self.tally.graded} of {self.rows} answers graded, "
            f"{self.tally.failed} failed; grading spend ${self.tally.spend_usd:.4f}"
        )
        a = self.figures
        if a is None:
            return f"{head}\ntoo few answers graded to compare (at least 2 are needed)"
        lines = [
            head,
            f"  agreement    {a.agreement:6.3f}   both good or both bad at quality >= {a.threshold:g}",
            f"  correlation  {a.correlation:6.3f}   Pearson's r",
            f"  bias         {a.bias:+6.3f}   mean of graded minus known",
            "  bias by model (graded minus known, answers graded):",
        ]
        width = max(map(len, a.bias_by_model), default=0)
        lines += [
            f"    {m:<{width}}  {b:+6.3f}  {self.graded_by_model.get(m, 0):>5}" for m, b in a.bias_by_model.items()
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The report as JSON: the figures of :class:`~router_ml.graders.Agreement` (null if there are none), and the
        grader, the benchmark, the rows, the answers graded per model, the spend and the failure reasons."""
        doc = {
            "grader": self.grader,
            "benchmark": str(self.benchmark),
            "rows": self.rows,
            "spend_usd": self.tally.spend_usd,
            "agreement": json.loads(self.figures.to_json()) if self.figures else None,
            "graded_by_model": self.graded_by_model,
            "failures": dict(self.tally.reasons.most_common()),
        }
        return json.dumps(doc, indent=2)


def measure_agreement(
    benchmark: Path,
    batch: BatchGrading,
    *,
    limit: int | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    progress: bool | None = None,
) -> AgreementReport:
    """Grade the answers of ``benchmark`` (all, or ``limit`` drawn with ``seed``) and compare with their quality."""
    if limit is not None and limit < 2:
        raise InvalidInput(f"grade: --limit must be at least 2, got {limit}")
    if not 0 < threshold <= 1:
        raise InvalidInput(f"grade: --threshold must lie in (0, 1], got {threshold}")
    frame = with_answers(load_benchmark(benchmark), f"benchmark {benchmark}", batch.grader.name)
    frame = frame.filter(pl.col("answer").is_not_null())
    if limit is not None and limit < frame.height:
        frame = frame.sample(n=limit, seed=seed)
    frame = frame.with_row_index("_key").with_columns(pl.col("_key").cast(pl.String))
    graded: dict[str, float] = {}
    tally = Tally()
    for outcome in grade_many(batch, jobs_of(frame, "_key"), tally, total=frame.height, desc="agreement"):
        if outcome.quality is not None:
            graded[outcome.key] = outcome.quality
    keys = frame["_key"].to_list()
    models = frame["model"].to_list()
    figures = None
    if len(graded) >= 2:
        figures = agreement(frame["quality"].to_list(), [graded.get(k) for k in keys], models, threshold=threshold)
    counts = Counter(m for k, m in zip(keys, models) if k in graded)
    return AgreementReport(batch.grader_id, benchmark, frame.height, figures, dict(sorted(counts.items())), tally)
