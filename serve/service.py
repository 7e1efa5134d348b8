"""The service: what every endpoint does, with no HTTP in it; the handlers in :mod:`serve.app` parse, call one method
here and format.

One prompt's path (:meth:`Service.decide`): the prompt is embedded on a worker thread,
:class:`~serve.learner.OnlineLearner` samples a model on the policy thread, the decision is committed to the
:class:`~router_ml.decision_log.DecisionLog`, and only then does the answer go out. A grade (:meth:`Service.grade`)
is committed and queued to the policy thread; the learner snapshots the policy to MLflow every N updates or T seconds.
A request the service turns down raises :class:`Refused` (a status and a message naming the field).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi.concurrency import run_in_threadpool

from router_ml.budget import DualLambda, QualityFloor
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import (
    AnswerInFlight,
    ClientCostRefused,
    DecisionLog,
    DecisionRecord,
    DuplicateFeedback,
    GradedDecision,
    Outcome,
    UnknownDecision,
    new_decision_id,
)
from router_ml.errors import UserError
from router_ml.log_store import LogUnavailable
from router_ml.operating import OperatingPoint
from router_ml.router import Router
from serve.auth import Keys, Principal
from serve.bodies import FeedbackRequest, RouteRequest
from serve.config import ServeConfig
from serve.grading import Grading
from serve.learner import OnlineLearner
from serve.metrics import Metrics
from serve.upstream import Forwarder, Usage

log = logging.getLogger("router_ml.serve")

Role = Literal["all", "router"]
"""``all``: one process decides and learns (the default). ``router``: a replica that decides and commits grades while
a single ``router-ml learn --follow`` process learns from the shared log."""


class Refused(UserError):
    """A request the service turns down: the HTTP status, and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Service:
    """Everything the endpoints share, and what each of them does."""

    config: ServeConfig
    learner: OnlineLearner
    log: DecisionLog
    forwarder: Forwarder
    metrics: Metrics
    budget: DualLambda | None
    keys: Keys
    floor: QualityFloor | None = None
    role: Role = "all"
    grading: Grading | None = None
    """Background grading of a sample of answered chat completions (``[grader]``), or None."""
    releases: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """What the service holds until it closes (the learner lock)."""

    @property
    def router(self) -> Router:
        return self.learner.router

    # -- the cost weight ------------------------------------------------------------------------
    def floor_factor(self) -> float:
        """The quality floor's factor on the cost weight, checked against the live savings estimate (1 without one)."""
        if self.floor is None:
            return 1.0
        report = self.learner.savings.report()
        return self.floor.check(report.n, report.quality_diff.low, report.quality_diff.high)

    def moved(self, lam: float) -> float:
        """A cost weight as served: ``floor factor x (lam + the budget's multiplier)``."""
        return self.floor_factor() * (lam + (self.budget.mu if self.budget is not None else 0.0))

    def effective_lambda(self, requested: float | None) -> float:
        """The request's lambda (else the policy's), moved by the budget and the quality floor."""
        return self.moved(self.router.policy.config.lam if requested is None else requested)

    def serving(self, requested: float | None) -> tuple[float | None, OperatingPoint | None]:
        """What a decision serves: a request's own lambda is the router alone at it; otherwise the policy's operating
        point, with every router arm's lam moved by the budget and the quality floor (unchanged when neither acts)."""
        if requested is not None:
            return self.moved(requested), None
        point = self.router.policy.operating
        moved = point.map_lams(self.moved)
        return None, (None if moved == point else moved)

    def cost_bound(self, model: str, prompt: str) -> float:
        """The most one call of ``model`` on ``prompt`` can cost: its catalog prices for as many input tokens as the
        prompt has UTF-8 bytes (no tokenizer makes more) and ``learning.max_completion_tokens`` output tokens."""
        catalog = self.router.policy.catalog
        if model not in catalog:
            return 0.0
        return catalog.spec(model).cost_usd(len(prompt.encode()), self.config.learning.max_completion_tokens)

    # -- deciding -------------------------------------------------------------------------------
    async def route(self, req: RouteRequest, tenant: str) -> DecisionRecord:
        """``POST /v1/route``: a decision for the key's own tenant."""
        if req.tenant is not None and req.tenant != tenant:
            raise Refused(403, "'tenant': a key acts for its own tenant; omit 'tenant' or name the key's own")
        return await self.decide(req.prompt, req.candidates, req.lam, tenant)

    async def decide(
        self, prompt: str, candidates: list[str] | None, lam: float | None, tenant: str, *, forwarded: bool = False
    ) -> DecisionRecord:
        """Embed, decide on the policy thread, commit the decision; returns the logged record."""
        router = self.router
        if candidates is not None:
            unknown = sorted(set(candidates) - set(router.policy.catalog.names))
            if unknown:
                raise Refused(422, f"'candidates': model(s) not in the catalog: {unknown[:5]}")
        effective = self.effective_lambda(lam)
        at_lam, point = self.serving(lam)
        if self.grading is not None:
            self.grading.cap.route()
        tokens = estimate_tokens(prompt)
        embedding = await run_in_threadpool(router.embed, prompt)
        decision_id = new_decision_id()
        decision, version = await self.learner.decide(
            decision_id, embedding, candidates=candidates, lam=at_lam, point=point, prompt_tokens=tokens
        )
        catalog = router.policy.catalog
        est = router.expected_cost_per_1k(tokens)[catalog.index(decision.model)] / 1000.0
        record = DecisionRecord(
            decision_id=decision_id,
            created_at=time.time(),
            tenant=tenant,
            prompt=prompt,
            model=decision.model,
            propensity=decision.probability,
            candidates=tuple(candidates or catalog.names),
            distribution={m: p for m, p in decision.distribution.items() if p > 0},
            lam=effective,
            policy_version=version,
            est_cost_usd=float(est),
            forwarded=forwarded,
        )
        await run_in_threadpool(self.log.record_decision, record)
        self.metrics.choices.labels(self.metrics.model(decision.model)).inc()
        self.metrics.lam.set(effective)
        return record

    # -- grading and metering -------------------------------------------------------------------
    async def grade(self, req: FeedbackRequest, tenant: str) -> GradedDecision:
        """``POST /v1/feedback``: commit a grade of the key's own tenant's decision and queue the update. The first
        grade of a decision wins (a client's or a grader's, :mod:`serve.grading`); a second gets 409."""
        quality, signal = req.graded()
        try:
            graded = await run_in_threadpool(
                lambda: self.learner.record_feedback(
                    req.decision_id,
                    quality,
                    req.cost_usd,
                    tenant=tenant,
                    cost_bound=self.cost_bound,
                    source="client",
                    grader=f"client:{signal}",
                )
            )
        except UnknownDecision as exc:
            raise Refused(404, f"'decision_id': no decision '{req.decision_id}'") from exc
        except DuplicateFeedback as exc:
            raise Refused(409, f"'decision_id': decision '{req.decision_id}' already has feedback") from exc
        except AnswerInFlight as exc:
            raise Refused(409, f"'decision_id': {exc}") from exc
        except ClientCostRefused as exc:
            raise Refused(422, str(exc)) from exc
        self.metrics.feedback_lag.observe(max(graded.received_at - graded.created_at, 0.0))
        if req.cost_usd is not None:
            self.spent(graded.model, tenant, req.cost_usd)
        return graded

    async def metered(
        self,
        record: DecisionRecord,
        answered_by: str,
        usage: Usage,
        outcome: Outcome,
        answer: str = "",
        reference: str | None = None,
    ) -> float:
        """Commit how a forwarded call ended and what it cost, with its grade job if an ``answered`` call is sampled
        for grading (``answer``: its text; ``reference``: the request's); feed spend, budget and length estimates."""
        cost = self.router.policy.catalog.spec(answered_by).cost_usd(usage.input_tokens, usage.output_tokens)
        job = None
        if self.grading is not None and outcome == "answered":
            job = self.grading.job_for(record, answered_by, answer, reference)
        await run_in_threadpool(
            self.log.record_usage,
            record.decision_id,
            answered_by,
            cost,
            usage.input_tokens,
            usage.output_tokens,
            outcome,
            job,
        )
        self.spent(answered_by, record.tenant, cost)
        if outcome == "answered":
            await self.learner.observe_usage(answered_by, usage.output_tokens)
        return cost

    async def failed(self, record: DecisionRecord) -> None:
        """Commit that a forwarded call got no answer (nothing is spent)."""
        await run_in_threadpool(self.log.record_usage, record.decision_id, "", 0.0, 0, 0, "failed")

    def spent(self, model: str, tenant: str | None, cost: float) -> None:
        """Count a cost in the metrics and the budget."""
        self.metrics.spend.labels(self.metrics.model(model), self.metrics.tenant(tenant)).inc(cost)
        if self.budget is not None:
            self.budget.observe(cost)

    # -- reports --------------------------------------------------------------------------------
    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``status`` is ``degraded`` (and ``fault`` says why) while the log refuses writes."""
        try:
            counts: dict[str, int] | None = await run_in_threadpool(self.log.counts)
        except LogUnavailable:
            counts = None
        fault = self.log.fault
        return {
            "status": "degraded" if fault else "ok",
            "fault": fault,
            "policy_version": self.learner.version,
            "feedback_applied": self.learner.applied,
            "log": counts,
        }

    async def unready(self) -> str | None:
        """``GET /readyz``: why the decision log takes no write now, or None when it does."""
        fault = await run_in_threadpool(self.log.probe)
        return f"decision log unavailable: {fault}" if fault else None

    async def spend(self, who: Principal) -> dict[str, Any]:
        """``GET /v1/spend``: routed spend by model and by cost source, a tenant's own, or for an admin every tenant's;
        and apart from it, what grading cost (``grading``, by grader)."""
        found: dict[str, Any] = {
            "by_model": await run_in_threadpool(self.log.spend, "model", who.tenant),
            "by_source": await run_in_threadpool(self.log.spend, "source", who.tenant),
        }
        if who.admin:
            found["by_tenant"] = await run_in_threadpool(self.log.spend, "tenant")
        else:
            found["tenant"] = who.tenant
        judged = await run_in_threadpool(self.log.grading_spend, who.tenant)
        found["grading"] = {"by_grader": judged, "total_usd": sum(judged.values())}
        return found | {
            "lambda": self.effective_lambda(None),
            "budget_usd_per_1k": self.config.budget.target_usd_per_1k,
        }

    def savings(self) -> dict[str, Any]:
        """``GET /v1/savings``: the live estimate against the reference model, the quality floor's factor, and a
        day-one policy's prior, the state of its rule and its exploration spend (:mod:`router_ml.day_one`)."""
        prior = self.router.policy.prior
        return self.learner.savings.report().to_dict() | {
            "quality_floor": self.config.target.quality_floor,
            "floor_factor": self.floor_factor(),
            "lambda": self.effective_lambda(None),
            "operating_point": self.router.policy.operating.label,
        } | ({"day_one": prior.report()} if prior is not None else {})

    def prometheus(self) -> bytes:
        """``GET /metrics``: the metrics in Prometheus' text format, the savings gauges brought up to date."""
        self.metrics.show_savings(self.learner.savings.report(), self.floor_factor())
        return self.metrics.render()

    # -- running --------------------------------------------------------------------------------
    async def maintain(self) -> None:
        """Every second: a time-based snapshot if due; every ``reload_poll_seconds``: has the alias moved (and, for a
        router replica, has the learner published a newer snapshot)? Runs until cancelled."""
        last_poll = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.learner.tick()
                if time.monotonic() - last_poll >= self.config.learning.reload_poll_seconds:
                    last_poll = time.monotonic()
                    await self._reload()
            except Exception:  # the service keeps serving the policy it has
                log.exception("maintenance failed")

    async def _reload(self) -> None:
        moved = await run_in_threadpool(self.learner.poll_alias)
        if self.role == "router":
            moved = await run_in_threadpool(self.learner.refresh) or moved
        if moved:
            log.info("reloaded: now serving %s", self.learner.version)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """What runs beside the server for its lifetime: maintenance, and grading if configured."""
        return [self.maintain(), *([self.grading.run()] if self.grading is not None else [])]

    async def close(self) -> None:
        await self.forwarder.aclose()
        await run_in_threadpool(self.learner.close)
        self.releases.close()
        self.log.close()
