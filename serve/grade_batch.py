"""Grading many answers at once: each job retried with backoff, a bounded number in flight, a progress bar.

Both modes of ``router-ml grade`` (a logged-traffic file, :mod:`serve.grade_logs`; a judge's agreement with a
benchmark, :mod:`serve.grade_agreement`) build their grader with :func:`batch_grading` and run their jobs through
:func:`grade_many`.

A judge's failure (down, slow, rate-limited, an unparseable verdict) may pass, so a job is tried up to
``[grader].max_attempts`` times, waiting ``backoff_seconds`` before the second attempt and twice as long before each
next one, or a 429's ``Retry-After`` when that is longer, never more than a minute (:class:`~router_ml.graders.Retry`).
A check (exact, regex, ...) gives the same answer every time, so its failure is final at once. A grader that raises
anything but :class:`~router_ml.graders.GradeFailed` (a bug), or returns something that is not a quality in [0, 1],
fails the job at once with the reason (:func:`~router_ml.graders.attempt`). A failed job carries its reason and what
its attempts cost; nothing is learned from it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import polars as pl
from tqdm.auto import tqdm

from router_ml.catalog import Catalog
from router_ml.contracts import DataValidationError
from router_ml.errors import InvalidInput
from router_ml.graders import Grader, GradeRequest, LLMJudge, Retry, attempt, kind_of, label
from serve.config import GraderConfig, GraderKind, ServeConfig

KINDS: tuple[str, ...] = get_args(GraderKind)
REFERENCE_CHECKS = frozenset({"exact", "regex", "numeric"})
"""The kinds that compare an answer with a ``reference``."""


@dataclass(frozen=True)
class BatchGrading:
    """A grader and how to run it: its retries and how many jobs at once."""

    grader: Grader
    retry: Retry
    concurrency: int

    @property
    def grader_id(self) -> str:
        """``name:version``, written with each grade."""
        return label(self.grader)

    @property
    def source(self) -> str:
        """``judge`` for a model's verdict, ``check`` for a reference or form check."""
        return kind_of(self.grader)

    def close(self) -> None:
        """Close the judge's connection pool, if it has one."""
        if isinstance(self.grader, LLMJudge):
            close = getattr(self.grader.complete, "close", None)
            if callable(close):
                close()


def batch_grading(kind: str | None, config_path: Path | None, catalog_path: Path) -> BatchGrading:
    """The grader ``kind`` names (default: the config's ``[grader].kind``), configured by the ``[grader]`` and
    ``[upstream]`` sections of the service config at ``config_path``; a judge must be a model of the catalog at
    ``catalog_path`` with an upstream endpoint. Every mistake is an :class:`InvalidInput` naming the flag or field."""
    from serve.judge import make_grader, retry_for
    from serve.upstream import resolve_upstreams

    if kind is not None and kind not in KINDS:
        raise InvalidInput(f"grade: --grader must be one of {', '.join(KINDS)}; got {kind!r}")
    config = ServeConfig.load(config_path) if config_path is not None else None
    section = config.grader if config is not None else GraderConfig()
    if kind is not None:
        section = section.model_copy(update={"kind": kind})
    if section.kind is None:
        raise InvalidInput("grade: no grader: pass --grader, or --config with a [grader] kind")
    catalog, upstreams = Catalog.load(catalog_path), {}  # make_grader takes one; only a judge looks in it
    if section.kind == "judge":
        if config is None:
            raise InvalidInput("grade: --grader judge needs --config (its [grader].judge_model and [upstream])")
        if not section.judge_model:
            raise InvalidInput("grade: 'grader.judge_model' is not set in --config; the judge is a catalog model")
        if section.judge_model not in catalog:
            raise InvalidInput(
                f"grade: 'grader.judge_model' {section.judge_model!r} is not in the catalog {catalog_path} (--catalog)"
            )
        upstreams = resolve_upstreams(catalog, config.upstream)
    if section.kind == "json-schema" and not section.schema_:
        raise InvalidInput("grade: --grader json-schema needs 'grader.schema' (a JSON Schema file) in --config")
    grader = make_grader(section, catalog, upstreams)
    assert grader is not None  # a kind is set
    return BatchGrading(grader, retry_for(section), section.concurrency)


@dataclass(frozen=True)
class Job:
    """One answer to grade, under the name its outcome comes back with."""

    key: str
    request: GradeRequest


def with_answers(frame: pl.DataFrame, what: str, kind: str) -> pl.DataFrame:
    """``frame`` with its ``answer`` column (required) and ``reference`` column (required by a reference check,
    optional otherwise) checked as text."""
    for column in ("answer", "reference"):
        if column not in frame.columns:
            if column == "answer":
                raise DataValidationError(
                    what,
                    "answer",
                    "is missing: grading reads each row's answer text from it (the decision log "
                    "does not keep answers: join them in by event_id or prompt)",
                )
            if kind in REFERENCE_CHECKS:
                raise DataValidationError(what, "reference", f"is missing: the {kind} grader compares answers with it")
            continue
        dtype = frame.schema[column]
        if dtype == pl.Null:
            frame = frame.with_columns(pl.col(column).cast(pl.String))
        elif dtype != pl.String:
            raise DataValidationError(what, column, f"must be string, got {dtype}")
    return frame


def jobs_of(frame: pl.DataFrame, key: str) -> Iterator[Job]:
    """One job per row of ``frame`` (``prompt``, ``answer``, ``reference`` if present), named by column ``key``."""
    references = frame["reference"] if "reference" in frame.columns else pl.Series([None] * frame.height)
    for k, prompt, answer, reference in zip(frame[key], frame["prompt"], frame["answer"], references):
        yield Job(str(k), GradeRequest(prompt=prompt, answer=answer, reference=reference))


@dataclass(frozen=True)
class Outcome:
    """A job's end: a ``quality`` and the grader's ``detail``, or no quality and the failure ``reason``; what every
    attempt cost, and how many there were."""

    key: str
    quality: float | None
    detail: str
    cost_usd: float
    attempts: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the job was graded."""
        return self.quality is not None


@dataclass
class Tally:
    """What a batch did so far: jobs graded and failed, what grading paid, and how often each failure happened."""

    graded: int = 0
    failed: int = 0
    spend_usd: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        """Count one outcome."""
        self.spend_usd += outcome.cost_usd
        if outcome.ok:
            self.graded += 1
        else:
            self.failed += 1
            self.reasons[outcome.reason] += 1

    def failure_lines(self, top: int = 5) -> list[str]:
        """The most frequent failure reasons, one line each with its count."""
        return [f"  {n} x {reason}" for reason, n in self.reasons.most_common(top)]


def grade_one(grader: Grader, job: Job, retry: Retry, stop: threading.Event | None = None) -> Outcome:
    """Grade one job, trying again as ``retry`` says (:meth:`~router_ml.graders.Retry.again`); never raises (a
    failure is an outcome). ``stop`` set (the batch was interrupted) ends the job before its next attempt."""
    stop = stop or threading.Event()
    cost, attempts = 0.0, 0
    while True:
        attempts += 1
        tried = attempt(grader, job.request)
        cost += tried.cost_usd
        if tried.grade is not None:
            return Outcome(job.key, float(tried.grade.quality), tried.grade.detail, cost, attempts)
        if not retry.again(attempts, tried) or stop.wait(retry.delay(attempts, tried.retry_after)):
            tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
            return Outcome(job.key, None, f"failed after {tries}: {tried.reason}", cost, attempts, tried.reason)


def grade_many(
    batch: BatchGrading,
    jobs: Iterable[Job],
    tally: Tally,
    *,
    total: int | None = None,
    desc: str = "grading",
    progress: bool | None = None,
) -> Iterator[Outcome]:
    """Each job's :class:`Outcome` as it finishes (in no set order), ``batch.concurrency`` jobs at a time, counted
    into ``tally``; a progress bar on standard error (``progress=None``: only on a terminal).

    Jobs are taken from ``jobs`` as room frees, so a long input is never all in flight. If the caller stops (an
    interrupt, or leaving the loop), no new attempt starts; calls already under way finish in the background."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=batch.concurrency, thread_name_prefix="grade")
    pending: set[Future[Outcome]] = set()
    todo = iter(jobs)
    bar = tqdm(total=total, desc=desc, unit="answer", disable=None if progress is None else not progress)
    try:
        while True:
            for job in todo:
                pending.add(pool.submit(grade_one, batch.grader, job, batch.retry, stop))
                if len(pending) >= 2 * batch.concurrency:
                    break
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                tally.add(outcome)
                bar.update(1)
                bar.set_postfix_str(f"failed {tally.failed}, ${tally.spend_usd:.4f}", refresh=False)
                yield outcome
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
