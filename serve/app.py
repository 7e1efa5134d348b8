"""The HTTP service: route, feedback, OpenAI-compatible chat completions, health and metrics.

One prompt's path: ``POST /v1/route`` (or ``/v1/chat/completions``) embeds the prompt on a worker
thread, :class:`~serve.learner.OnlineLearner` samples a model on the policy thread, the decision is
committed to the :class:`~router_ml.decision_log.DecisionLog`, and only then does the answer go out.
``POST /v1/feedback`` commits the grade and queues the update on the policy thread; the learner
snapshots the policy to MLflow every N updates or T seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router_ml.budget import DualLambda
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import DecisionLog, DecisionRecord, DuplicateFeedback, UnknownDecision, new_decision_id
from router_ml.registry import PolicyRegistry
from router_ml.router import Router
from serve.config import ConfigError, ServeConfig, ServerConfig
from serve.learner import OnlineLearner, resolve_start
from serve.metrics import Metrics
from serve.upstream import ClientError, Forwarder, UpstreamFailed, Usage, resolve_upstreams

log = logging.getLogger("router_ml.serve")

MAX_PROMPT_CHARS = 200_000
ROUTER_MODEL = "router"
_BEARER = HTTPBearer(auto_error=False)  # module level: FastAPI resolves the (string) annotations in this namespace
Text = Annotated[str, Field(min_length=1, max_length=256)]


# -- request and response bodies ----------------------------------------------------------------
class RouteRequest(BaseModel):
    """Ask for a model for one prompt."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    candidates: list[Text] | None = Field(default=None, min_length=1, max_length=1000)
    lam: float | None = Field(default=None, alias="lambda", ge=0, le=1e6, allow_inf_nan=False)
    tenant: Text | None = None

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt is blank")
        return v


class RouteResponse(BaseModel):
    """The decision: which model, with what probability, out of which distribution, by which policy version."""

    model_config = ConfigDict(populate_by_name=True)
    decision_id: str
    model: str
    probability: float
    distribution: dict[str, float]
    policy_version: str
    lam: float = Field(alias="lambda")


class FeedbackRequest(BaseModel):
    """The grade of one decision's answer (and optionally what it cost)."""

    model_config = ConfigDict(extra="forbid")
    decision_id: Text
    quality: float = Field(ge=0, le=1, allow_inf_nan=False)
    cost_usd: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Text
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """An OpenAI chat completion request; ``model`` must be ``router``. Other fields pass through.

    Two optional extensions (``extra_body`` in the OpenAI SDK): ``router_lambda``, the cost weight of this
    request (also the ``x-router-lambda`` header), and ``router_candidates``, the models it may use.
    """

    model_config = ConfigDict(extra="allow")
    model: Text
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    router_lambda: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    router_candidates: list[Text] | None = Field(default=None, min_length=1, max_length=1000)
    user: Text | None = None


def conversation_text(messages: list[ChatMessage]) -> str:
    """The text the router embeds for a conversation: each message as ``role: content``."""
    lines = []
    for m in messages:
        if isinstance(m.content, str):
            text = m.content
        else:
            text = " ".join(str(p.get("text", "")) for p in m.content or [] if p.get("type") == "text")
        lines.append(f"{m.role}: {text}")
    return "\n".join(lines)


# -- the service --------------------------------------------------------------------------------
@dataclass
class Service:
    """Everything the endpoints share."""

    config: ServeConfig
    learner: OnlineLearner
    log: DecisionLog
    forwarder: Forwarder
    metrics: Metrics
    budget: DualLambda | None
    api_keys: tuple[str, ...]

    @property
    def router(self) -> Router:
        return self.learner.router

    def effective_lambda(self, requested: float | None) -> float:
        """The request's lambda (else the policy's), plus the budget's multiplier."""
        lam = self.router.policy.config.lam if requested is None else requested
        return lam + (self.budget.mu if self.budget is not None else 0.0)

    async def decide(
        self, prompt: str, candidates: list[str] | None, lam: float | None, tenant: str | None
    ) -> DecisionRecord:
        """Embed, decide on the policy thread, commit the decision; returns the logged record."""
        router = self.router
        if candidates is not None:
            unknown = sorted(set(candidates) - set(router.policy.catalog.names))
            if unknown:
                raise HTTPException(422, f"'candidates': model(s) not in the catalog: {unknown[:5]}")
        effective = self.effective_lambda(lam)
        tokens = estimate_tokens(prompt)
        embedding = await run_in_threadpool(router.embed, prompt)
        decision_id = new_decision_id()
        decision, version = await self.learner.decide(
            decision_id, embedding, candidates=candidates, lam=effective, prompt_tokens=tokens
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
        )
        await run_in_threadpool(self.log.record_decision, record)
        self.metrics.choices.labels(decision.model).inc()
        self.metrics.lam.set(effective)
        return record

    async def metered(self, record: DecisionRecord, answered_by: str, usage: Usage) -> float:
        """Commit what an upstream call used and cost; feed spend, budget and length estimates."""
        cost = self.router.policy.catalog.spec(answered_by).cost_usd(usage.input_tokens, usage.output_tokens)
        await run_in_threadpool(
            self.log.record_usage, record.decision_id, answered_by, cost, usage.input_tokens, usage.output_tokens
        )
        self.spent(answered_by, record.tenant, cost)
        await self.learner.observe_usage(answered_by, usage.output_tokens)
        return cost

    def spent(self, model: str, tenant: str | None, cost: float) -> None:
        """Count a cost in the metrics and the budget."""
        self.metrics.spend.labels(model, tenant or "").inc(cost)
        if self.budget is not None:
            self.budget.observe(cost)

    async def close(self) -> None:
        await self.forwarder.aclose()
        await run_in_threadpool(self.learner.close)
        self.log.close()


def api_keys(server: ServerConfig) -> tuple[str, ...]:
    """The bearer keys from ``$<api_keys_env>`` (comma-separated); refuses to start without one."""
    keys = tuple(k.strip() for k in os.environ.get(server.api_keys_env, "").split(",") if k.strip())
    if not keys:
        raise ConfigError(f"serve: set at least one bearer API key in ${server.api_keys_env} (comma-separated)")
    return keys


def build_service(config: ServeConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> Service:
    """Load the policy (catching up on the log), connect the log and the upstreams."""
    keys = api_keys(config.server)
    registry = PolicyRegistry(config.policy.tracking_uri or None)
    decision_log = DecisionLog(config.log.resolved_path(), config.log.durability)
    loaded = resolve_start(registry, config.policy.ref, decision_log)
    router = Router.from_artifact(loaded.artifact, version=loaded.version)
    ref = config.policy.ref
    alias = None if Path(ref).is_dir() or ref.isdigit() else ref
    metrics = Metrics()
    learner = OnlineLearner(loaded, router, decision_log, registry, config.learning, metrics, alias=alias)
    caught_up = learner.start(loaded)
    if caught_up:
        log.info("learned %d feedback rows committed after version %s", caught_up, loaded.version)
    forwarder = Forwarder(
        resolve_upstreams(router.policy.catalog, config.upstream), config.upstream, transport=transport
    )
    target = config.budget.target_usd_per_1k
    budget = DualLambda(target, config.budget.step) if target is not None else None
    return Service(config, learner, decision_log, forwarder, metrics, budget, keys)


# -- middleware ---------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare their length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _openai_error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


# -- the app ------------------------------------------------------------------------------------
def create_app(service: Service) -> FastAPI:
    """The FastAPI app over a built :class:`Service`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_maintain(service))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await service.close()

    app = FastAPI(title="router-ml", version="0.1.0", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=service.config.server.max_body_bytes)
    metrics = service.metrics

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        token = credentials.credentials.encode() if credentials is not None else b""
        if not any(hmac.compare_digest(token, key.encode()) for key in service.api_keys):
            raise HTTPException(401, "missing or invalid bearer API key", headers={"WWW-Authenticate": "Bearer"})

    secured = [Depends(authorised)]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field; the offending input is not echoed (it may be huge, secret or not JSON)."""
        errors = [
            {
                "loc": [str(part) for part in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        path = request.url.path if request.url.path in _PATHS else "other"
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        learner = service.learner
        return {
            "status": "ok",
            "policy_version": learner.version,
            "feedback_applied": learner.applied,
            "log": await run_in_threadpool(service.log.counts),
        }

    @app.post("/v1/route", dependencies=secured)
    async def route(req: RouteRequest) -> RouteResponse:
        record = await service.decide(req.prompt, req.candidates, req.lam, req.tenant)
        return RouteResponse(
            decision_id=record.decision_id,
            model=record.model,
            probability=record.propensity,
            distribution=record.distribution,
            policy_version=record.policy_version,
            **{"lambda": record.lam},
        )

    @app.post("/v1/feedback", dependencies=secured, status_code=202)
    async def feedback(req: FeedbackRequest) -> dict[str, str]:
        try:
            graded = await run_in_threadpool(
                service.learner.record_feedback, req.decision_id, req.quality, req.cost_usd
            )
        except UnknownDecision as exc:
            raise HTTPException(404, f"'decision_id': no decision '{req.decision_id}'") from exc
        except DuplicateFeedback as exc:
            raise HTTPException(409, f"'decision_id': decision '{req.decision_id}' already has feedback") from exc
        metrics.feedback_lag.observe(max(graded.received_at - graded.created_at, 0.0))
        if req.cost_usd is not None:
            service.spent(graded.answered_by or graded.model, None, req.cost_usd)
        return {"decision_id": graded.decision_id, "status": "accepted"}

    @app.post("/v1/chat/completions", dependencies=secured, response_model=None)
    async def chat(req: ChatRequest, request: Request) -> Response:
        if req.model != ROUTER_MODEL:
            return _openai_error(400, f"'model' must be '{ROUTER_MODEL}' (got '{req.model}')", "invalid_request_error")
        upstreams = service.forwarder.upstreams
        offered = [m for m in service.router.policy.catalog.names if m in upstreams]
        if req.router_candidates is not None:
            offered = [m for m in offered if m in set(req.router_candidates)]
        if not offered:
            return _openai_error(503, "no candidate model has an upstream endpoint", "server_error")
        lam = req.router_lambda
        header = request.headers.get("x-router-lambda")
        if lam is None and header is not None:
            try:
                lam = float(header)
            except ValueError:
                lam = math.nan
            if not (math.isfinite(lam) and lam >= 0):
                return _openai_error(422, "header 'x-router-lambda' must be a number >= 0", "invalid_request_error")
        text = conversation_text(req.messages)
        record = await service.decide(text, offered, lam, req.user)
        ranking = [
            record.model,
            *sorted((m for m in record.distribution if m != record.model), key=lambda m: -record.distribution[m]),
        ]
        body = req.model_dump(exclude={"router_lambda", "router_candidates"}, exclude_none=True)
        headers = {
            "x-router-decision-id": record.decision_id,
            "x-router-policy-version": record.policy_version,
            "x-router-chosen": record.model,
        }
        try:
            if req.stream:
                streamed = await service.forwarder.stream(ranking, body, text)
                _count_fallbacks(metrics, streamed.failures)
                headers |= {"x-router-model": streamed.model, "x-router-fallbacks": str(len(streamed.failures))}

                async def relay() -> AsyncIterator[bytes]:
                    try:
                        async for chunk in streamed.chunks:
                            yield chunk
                    finally:
                        await service.metered(record, streamed.model, streamed.usage)

                return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)
            answer = await service.forwarder.complete(ranking, body, text)
        except UpstreamFailed as exc:
            _count_fallbacks(metrics, exc.failures)
            await run_in_threadpool(service.log.record_usage, record.decision_id, "", 0.0, 0, 0)
            return _openai_error(502, str(exc), "upstream_error")
        except ClientError as exc:
            return _openai_error(exc.status, str(exc), "invalid_request_error")
        _count_fallbacks(metrics, answer.failures)
        cost = await service.metered(record, answer.model, answer.usage)
        headers |= {
            "x-router-model": answer.model,
            "x-router-fallbacks": str(len(answer.failures)),
            "x-router-cost-usd": f"{cost:.8f}",
        }
        return JSONResponse(answer.body, headers=headers)

    @app.get("/v1/spend", dependencies=secured)
    async def spend() -> dict[str, Any]:
        return {
            "by_model": await run_in_threadpool(service.log.spend, "model"),
            "by_tenant": await run_in_threadpool(service.log.spend, "tenant"),
            "lambda": service.effective_lambda(None),
            "budget_usd_per_1k": service.config.budget.target_usd_per_1k,
        }

    @app.get("/metrics", dependencies=secured)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


_PATHS = frozenset({"/healthz", "/v1/route", "/v1/feedback", "/v1/chat/completions", "/v1/spend", "/metrics"})


def _count_fallbacks(metrics: Metrics, failures: list[Any]) -> None:
    for failure in failures:
        metrics.fallbacks.labels(failure.model).inc()


async def _maintain(service: Service) -> None:
    """Every second: a time-based snapshot if due; every ``reload_poll_seconds``: has the alias moved?"""
    last_poll = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        try:
            await service.learner.tick()
            if time.monotonic() - last_poll >= service.config.learning.reload_poll_seconds:
                last_poll = time.monotonic()
                if await run_in_threadpool(service.learner.poll_alias):
                    log.info("reloaded: now serving %s", service.learner.version)
        except Exception:  # the service keeps serving the policy it has
            log.exception("maintenance failed")


def run(config_path: str | None, host: str | None = None, port: int | None = None) -> None:
    """Build the service and serve it with uvicorn (``router-ml serve``)."""
    import uvicorn

    config = ServeConfig.load(config_path)
    service = build_service(config)
    uvicorn.run(
        create_app(service),
        host=host or config.server.host,
        port=port if port is not None else config.server.port,
        log_level="info",
        access_log=False,
    )
