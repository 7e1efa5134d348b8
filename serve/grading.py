"""Grading in the background: the service grades a random sample of the answers it forwarded, off the request path,
durably, and learns from the grades as it does from a client's.

1. **Sampling** (:meth:`Grading.job_for`, when a forwarded call ends): a chat completion answered by the model the
   policy sampled is drawn for grading with probability ``[grader] sample_rate``. A drawn decision gets a grade job,
   committed in the same transaction as the call's outcome: ``pending``, holding the answer (and the request's
   ``router_reference``) to grade; or ``skipped`` with its reason when judging it could break the spend cap.
2. **Backlog** (``max_pending``): while that many jobs are pending (a judge that is slow or down), a drawn decision
   is ``skipped`` too, so the answers kept for grading stay bounded.
3. **Spend cap** (:class:`SpendCap`): what judging has cost, plus a bound on the cost of every job still pending,
   plus this job's bound, must stay within ``spend_cap_usd_per_1k`` per 1,000 routed requests. A judge call's bound
   is its prompt's tokens and :data:`~serve.judge.JUDGE_MAX_TOKENS` of verdict at the judge model's prices.
4. **Grading** (:meth:`Grading.run`, a task beside the server): due jobs are claimed for a lease, graded on worker
   threads (``concurrency`` at a time), and the grade goes down the client's path
   (:meth:`~serve.learner.OnlineLearner.record_feedback`, ``source`` = judge or check, the grader's name and version
   stored with it): committed once, then learned. A judge's failed attempt (down, slow, rate-limited, a verdict that
   does not parse) is retried after ``backoff_seconds``, doubling each time (a 429's ``Retry-After`` if longer, at
   most a minute), and after ``max_attempts`` the job ends ``failed`` with its reason; a check that cannot grade, a
   grader that raises, or a quality outside [0, 1] ends it at once (:func:`~router_ml.graders.attempt`,
   :class:`~router_ml.graders.Retry`, the same rules as ``router-ml grade``). Nothing is learned from a failed job.
5. **Restarts**: jobs live in the decision log (``grade_jobs``); a restarted service releases the claims of the
   process that died and grades what is pending. The grade and the job's end are one transaction, so a job is graded
   once; a job killed mid-call is judged again (that call may be paid twice).

The answer text is kept in ``grade_jobs.answer`` only while its job is pending and is set to NULL when the job ends
(done, failed or superseded); it is never put in a metric label, a log line or an error body.

**Who wins**: the first grade of a decision. A client's grade that arrives first ends the pending job
(``superseded``, the judge is not called); a client's grade that arrives after the judge's gets 409.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool

from router_ml.budget import DualLambda
from router_ml.catalog import ModelSpec
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import (
    DecisionLog,
    DecisionRecord,
    DuplicateFeedback,
    GradeJob,
    NewGradeJob,
)
from router_ml.graders import Attempt, Grader, GradeRequest, LLMJudge, Retry, attempt, kind_of, label
from router_ml.log_store import LogUnavailable
from serve.config import GraderConfig
from serve.judge import JUDGE_MAX_TOKENS, retry_for
from serve.learner import OnlineLearner
from serve.metrics import Metrics

log = logging.getLogger("router_ml.serve.grading")

POLL_SECONDS = 0.2


@dataclass
class SpendCap:
    """Judging spend within ``usd_per_1k`` per 1,000 routed requests (``None``: no cap). Thread-safe."""

    usd_per_1k: float | None
    routed: int = 0
    spent: float = 0.0
    reserved: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def route(self) -> None:
        """Count one routed request."""
        with self._lock:
            self.routed += 1

    def reserve(self, bound: float) -> bool:
        """Hold ``bound`` USD for a new job if spend so far, the jobs held and it fit within the cap."""
        with self._lock:
            if self.usd_per_1k is not None and self.spent + self.reserved + bound > self.usd_per_1k * self.routed / 1e3:
                return False
            self.reserved += bound
            return True

    def settle(self, bound: float, cost: float, *, ended: bool) -> None:
        """Count what an attempt cost; release the job's hold when it ended."""
        with self._lock:
            self.spent += cost
            if ended:
                self.reserved = max(0.0, self.reserved - bound)


@dataclass
class Grading:
    """The service's background grading (see the module docstring)."""

    config: GraderConfig
    grader: Grader
    log: DecisionLog
    learner: OnlineLearner
    metrics: Metrics
    budget: DualLambda | None
    judge: ModelSpec | None = None
    """The judge model's prices (an LLM judge), to bound a call's cost."""
    seed: int = 0
    cap: SpendCap = field(init=False)
    retry: Retry = field(init=False)
    clock: Callable[[], float] = time.time
    backlog: int = 0
    """Pending jobs: counted in the log by the worker, plus those made since."""
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.cap = SpendCap(self.config.spend_cap_usd_per_1k)
        self.retry = retry_for(self.config)
        self._rng = random.Random(self.seed)

    @property
    def name(self) -> str:
        """The grader's name and version, as stored with its grades."""
        return label(self.grader)

    def start(self, routed: int, spent: float, *, release: bool) -> None:
        """Pick up where the log is: ``routed`` requests so far and ``spent`` on grading; with ``release``, void the
        claims a killed process left (only when no other process grades from this log)."""
        pending = [GradeRequest(*found) for found in self.log.pending_requests()]
        self.cap.routed, self.cap.spent = routed, spent
        self.cap.reserved = sum(self.bound(request) for request in pending)  # jobs from before still hold the cap
        self.backlog = len(pending)
        if release:
            self.log.release_claims()

    def bound(self, request: GradeRequest) -> float:
        """The most grading ``request`` can cost: 0 for a check; a judge's prompt and a whole verdict."""
        if self.judge is None or not isinstance(self.grader, LLMJudge):
            return 0.0
        return self.judge.cost_usd(estimate_tokens(self.grader.prompt_for(request)), JUDGE_MAX_TOKENS)

    def job_for(
        self, record: DecisionRecord, answered_by: str, answer: str, reference: str | None
    ) -> NewGradeJob | None:
        """Draw whether this answered call is graded; the job to commit with its outcome, or None."""
        if answered_by != record.model:  # a fallback's answer is not the sampled model's: it is not learned from
            return None
        with self._lock:
            drawn = self._rng.random() < self.config.sample_rate
        if not drawn:
            return None
        with self._lock:
            full = self.backlog >= self.config.max_pending
            self.backlog += 0 if full else 1
        if full:
            self.metrics.grade_jobs.labels("skipped").inc()
            return NewGradeJob(self.name, None, skipped="the grading backlog is full")
        if not self.cap.reserve(self.bound(GradeRequest(record.prompt, answer, reference))):
            self.metrics.grade_jobs.labels("skipped").inc()
            return NewGradeJob(self.name, None, skipped="the judging spend cap")
        self.metrics.grade_jobs.labels("pending").inc()
        return NewGradeJob(self.name, answer, reference)

    async def run(self) -> None:
        """Grade due jobs until cancelled; a log fault pauses, the claims lapse and the jobs come back."""
        lease = 2 * self.config.timeout_seconds + 5.0
        while True:
            try:
                backlog = await run_in_threadpool(self.log.pending_jobs)
                with self._lock:
                    self.backlog = backlog
                jobs = await run_in_threadpool(self.log.claim_jobs, self.clock(), lease, self.config.concurrency)
            except LogUnavailable:
                await asyncio.sleep(1.0)
                continue
            if not jobs:
                await asyncio.sleep(POLL_SECONDS)
                continue
            await asyncio.gather(*(self._grade(job) for job in jobs))

    async def _grade(self, job: GradeJob) -> None:
        request = GradeRequest(job.prompt, job.answer, job.reference)
        bound = self.bound(request)
        tried = await run_in_threadpool(attempt, self.grader, request)
        if tried.grade is None:
            await self._failed(job, tried, bound)
            return
        quality = tried.grade.quality
        try:
            await run_in_threadpool(
                lambda: self.learner.record_feedback(
                    job.decision_id,
                    quality,
                    None,
                    source=kind_of(self.grader),
                    grader=self.name,
                    grading_cost_usd=tried.cost_usd,
                )
            )
            state = "done"
        except DuplicateFeedback:
            await run_in_threadpool(
                self.log.end_job, job.decision_id, "superseded", "the client graded it first", tried.cost_usd
            )
            state = "superseded"
        except LogUnavailable:  # not committed: the claim lapses and the job is graded again
            self.cap.settle(bound, tried.cost_usd, ended=False)
            return
        self._spent(tried.cost_usd, bound, ended=True)
        self.metrics.grade_jobs.labels(state).inc()

    async def _failed(self, job: GradeJob, tried: Attempt, bound: float) -> None:
        attempts = job.attempts + 1
        again = self.retry.again(attempts, tried)
        log.warning("grade job %s attempt %d failed: %s", job.decision_id, attempts, tried.reason[:300])
        try:
            if again:
                wait = self.retry.delay(attempts, tried.retry_after)
                await run_in_threadpool(
                    self.log.retry_job, job.decision_id, self.clock() + wait, tried.reason, tried.cost_usd
                )
            else:
                await run_in_threadpool(self.log.end_job, job.decision_id, "failed", tried.reason, tried.cost_usd)
        except LogUnavailable:
            self.cap.settle(bound, tried.cost_usd, ended=False)
            return
        self._spent(tried.cost_usd, bound, ended=not again)
        self.metrics.grade_jobs.labels("retried" if again else "failed").inc()

    def _spent(self, cost: float, bound: float, *, ended: bool) -> None:
        self.cap.settle(bound, cost, ended=ended)
        if cost > 0:
            self.metrics.grading_spend.labels(self.name).inc(cost)
            if self.budget is not None:
                self.budget.observe(cost, calls=0)
