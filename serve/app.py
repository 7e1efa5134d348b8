"""The HTTP service: route, feedback, OpenAI-compatible chat completions, spend, health, readiness and metrics.

One prompt's path: ``POST /v1/route`` (or ``/v1/chat/completions``) embeds the prompt on a worker
thread, :class:`~serve.learner.OnlineLearner` samples a model on the policy thread, the decision is
committed to the :class:`~router_ml.decision_log.DecisionLog`, and only then does the answer go out.
``POST /v1/feedback`` commits the grade and queues the update on the policy thread; the learner
snapshots the policy to MLflow every N updates or T seconds.

Trust (:mod:`serve.auth`): a key's tenant is the request's tenant; a decision is graded only with a key of
its tenant (any other gets the same 404 as an unknown id); the cost the service metered for a call it
forwarded is the cost it learns from and bills, and a client-reported ``cost_usd`` is taken only for a
route-only decision, up to what the model can cost on that prompt. No client or upstream input gets a
5xx: bad input is a 4xx naming the field, a broken upstream a fallback (before the first byte) or a cut
stream with an error event (after it); a decision log that cannot be written is a 503 and ``/readyz`` says
not ready until a write succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import anyio
import httpx
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router_ml.budget import DualLambda, QualityFloor
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import (
    AnswerInFlight,
    ClientCostRefused,
    DecisionLog,
    DecisionRecord,
    DuplicateFeedback,
    Outcome,
    UnknownDecision,
    new_decision_id,
)
from router_ml.errors import InvalidInput, UserError
from router_ml.log_store import LogUnavailable, redact
from router_ml.operating import OperatingPoint
from router_ml.registry import PolicyRef, PolicyRegistry
from router_ml.router import Router
from router_ml.savings import LiveSavings
from serve.auth import Keys, Principal
from serve.config import ConfigError, ServeConfig
from serve.learner import OnlineLearner, resolve_start
from serve.metrics import Metrics
from serve.upstream import ClientError, Forwarder, Relay, UpstreamFailed, Usage, resolve_upstreams

log = logging.getLogger("router_ml.serve")

MAX_PROMPT_CHARS = 200_000
MAX_LAMBDA = 1e6
ROUTER_MODEL = "router"
_BEARER = HTTPBearer(auto_error=False)  # module level: FastAPI resolves the (string) annotations in this namespace
Text = Annotated[str, Field(min_length=1, max_length=256)]


Role = Literal["all", "router"]
"""``all``: one process decides and learns (the default). ``router``: a replica that decides and commits grades while
a single ``router-ml learn --follow`` process learns from the shared log."""


class StartupError(UserError):
    """The service cannot start; the message is one line saying what failed."""


# -- request and response bodies ----------------------------------------------------------------
class RouteRequest(BaseModel):
    """Ask for a model for one prompt."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    candidates: list[Text] | None = Field(default=None, min_length=1, max_length=1000)
    lam: float | None = Field(default=None, alias="lambda", ge=0, le=MAX_LAMBDA, allow_inf_nan=False)
    tenant: Text | None = Field(default=None, description="the key's own tenant, or omitted")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise InvalidInput("prompt is blank")
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
    """The grade of one decision's answer, and for a route-only decision optionally what the call cost."""

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
    router_lambda: float | None = Field(default=None, ge=0, le=MAX_LAMBDA, allow_inf_nan=False)
    router_candidates: list[Text] | None = Field(default=None, min_length=1, max_length=1000)
    user: Text | None = None

    @model_validator(mode="before")
    @classmethod
    def _forwardable(cls, data: Any) -> Any:
        """Everything here is forwarded as JSON: every string valid Unicode, every number finite."""
        found = unforwardable(data)
        if found is not None:
            path = found[0].encode("utf-8", "backslashreplace").decode()  # the path may hold the surrogate itself
            raise InvalidInput(f"'{path[:200]}' {found[1]}")
        return data

    def include_usage(self) -> bool:
        """Did the client ask for the usage chunk of a stream (``stream_options.include_usage``)?"""
        options = (self.model_extra or {}).get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def unforwardable(value: Any) -> tuple[str, str] | None:
    """The path (``messages.0.content``) of the first string in ``value`` that is not valid Unicode (a lone
    surrogate) or number that is not finite, and what is wrong with it; None when all is well."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return path, "is not valid Unicode text (it holds a lone surrogate)"
        elif isinstance(item, float) and not math.isfinite(item):
            return path, "must be a finite number"
        elif isinstance(item, dict):
            for key, inner in item.items():
                stack += [(f"{path}.{key}".lstrip("."), key), (f"{path}.{key}".lstrip("."), inner)]
        elif isinstance(item, list):
            stack += [(f"{path}.{i}".lstrip("."), inner) for i, inner in enumerate(item)]
    return None


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
    keys: Keys
    floor: QualityFloor | None = None
    role: Role = "all"
    releases: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """What the service holds until it closes (the learner lock)."""

    @property
    def router(self) -> Router:
        return self.learner.router

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

    async def decide(
        self, prompt: str, candidates: list[str] | None, lam: float | None, tenant: str, *, forwarded: bool = False
    ) -> DecisionRecord:
        """Embed, decide on the policy thread, commit the decision; returns the logged record."""
        router = self.router
        if candidates is not None:
            unknown = sorted(set(candidates) - set(router.policy.catalog.names))
            if unknown:
                raise HTTPException(422, f"'candidates': model(s) not in the catalog: {unknown[:5]}")
        effective = self.effective_lambda(lam)
        at_lam, point = self.serving(lam)
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

    async def metered(self, record: DecisionRecord, answered_by: str, usage: Usage, outcome: Outcome) -> float:
        """Commit how a forwarded call ended and what it cost; feed spend, budget and length estimates."""
        cost = self.router.policy.catalog.spec(answered_by).cost_usd(usage.input_tokens, usage.output_tokens)
        await run_in_threadpool(
            self.log.record_usage,
            record.decision_id,
            answered_by,
            cost,
            usage.input_tokens,
            usage.output_tokens,
            outcome,
        )
        self.spent(answered_by, record.tenant, cost)
        if outcome == "answered":
            await self.learner.observe_usage(answered_by, usage.output_tokens)
        return cost

    def spent(self, model: str, tenant: str | None, cost: float) -> None:
        """Count a cost in the metrics and the budget."""
        self.metrics.spend.labels(self.metrics.model(model), self.metrics.tenant(tenant)).inc(cost)
        if self.budget is not None:
            self.budget.observe(cost)

    async def close(self) -> None:
        await self.forwarder.aclose()
        await run_in_threadpool(self.learner.close)
        self.releases.close()
        self.log.close()


@contextlib.contextmanager
def _starting(step: str) -> Iterator[None]:
    """Turn any failure of a start-up step into one line naming the step (configuration errors pass as they are)."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StartupError(f"serve: cannot start: {step}: {detail}") from exc


def build_service(
    config: ServeConfig, *, transport: httpx.AsyncBaseTransport | None = None, role: Role = "all"
) -> Service:
    """Load the policy (catching up on the log), connect the log and the upstreams.

    ``role`` ``all`` (the default) decides and learns, and holds the log's learner lock; ``router`` decides, commits
    grades and serves the newest snapshot of the log's single learner (``router-ml learn --follow``)."""
    keys = Keys(config)
    releases = contextlib.ExitStack()
    decision_log = open_log(config)
    if role == "all":
        with _starting(f"decision log {decision_log.where}"):
            sole_learner = releases.enter_context(decision_log.store.learner_lock())
        if not sole_learner:
            raise StartupError(
                f"serve: cannot start: decision log {decision_log.where}: another process learns from it "
                "(a service or router-ml learn); start replicas with --role router"
            )
        with _starting(f"decision log {decision_log.where}"):
            decision_log.interrupted()
    with _starting(f"policy '{config.policy.ref}'"):
        ref = PolicyRef.parse(config.policy.ref)
        registry = PolicyRegistry(config.policy.tracking_uri or None)
        loaded = resolve_start(registry, ref, decision_log)
        router = Router.from_artifact(loaded.artifact, version=loaded.version)
    alias = ref.alias
    metrics = Metrics(tenants=keys.tenants, models=router.policy.catalog.names)
    savings = LiveSavings(reference_model(config, router), alpha=1 - config.savings.level)
    learner = OnlineLearner(
        loaded,
        router,
        decision_log,
        registry,
        config.learning,
        metrics,
        alias=alias,
        savings=savings,
        learns=role == "all",
    )
    with _starting("replaying the decision log"):
        caught_up = learner.start(loaded)
    if caught_up:
        log.info("learned %d feedback rows committed after version %s", caught_up, loaded.version)
    forwarder = Forwarder(
        resolve_upstreams(router.policy.catalog, config.upstream), config.upstream, transport=transport
    )
    target = config.budget.target_usd_per_1k
    budget = DualLambda(target, config.budget.step) if target is not None else None
    t = config.target
    floor = (
        QualityFloor(t.quality_floor, t.floor_step, t.floor_min_graded, t.floor_every)
        if t.quality_floor is not None
        else None
    )
    return Service(config, learner, decision_log, forwarder, metrics, budget, keys, floor, role, releases)


def reference_model(config: ServeConfig, router: Router) -> str:
    """The model the live savings estimate compares with: ``savings.reference``, else a day-one policy's default
    model, else the catalog's dearest."""
    catalog = router.policy.catalog
    prior = router.policy.prior.default if router.policy.prior is not None else None
    reference = config.savings.reference or prior or max(catalog.models, key=lambda m: m.blended_usd_per_mtok).name
    if reference not in catalog:
        raise ConfigError(f"config: 'savings.reference' {reference!r} is not in the policy's catalog")
    return reference


def open_log(config: ServeConfig) -> DecisionLog:
    """The configured decision log; a fault is one line naming it (a URL without its password)."""
    location = config.log.location()
    with _starting(f"decision log {redact(location)}"):
        return DecisionLog(location, config.log.durability, busy_timeout=config.log.busy_timeout_seconds)


# -- middleware ---------------------------------------------------------------------------------
class BodyReader:
    """Read each request body whole before the app sees it: over ``max_bytes`` is a 413 (declared or not),
    not arrived within ``timeout`` seconds a 408 (a client that declares more than it sends cannot hold a
    request open)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(413, f"request body over {self.max_bytes} bytes", scope, receive, send)
            return
        body, deadline = b"", time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                await _refuse(408, f"request body not received within {self.timeout:g} s", scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _refuse(413, f"request body over {self.max_bytes} bytes", scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: only a disconnect is left to hear
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"detail": message}, status_code=status, headers={"connection": "close"})
    await response(scope, receive, send)


class Measure:
    """Count requests and their latency by endpoint (a fixed set of paths) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            path = scope["path"] if scope["path"] in _PATHS else "other"
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            self.metrics.requests.labels(path, str(status)).inc()


class RelayResponse(StreamingResponse):
    """A relayed stream; however it ends (``[DONE]``, cut, the client gone, never started), the upstream is
    closed and ``finished`` runs, shielded from the cancellation a client disconnect brings."""

    def __init__(self, relay: Relay, finished: Callable[[Relay], Awaitable[None]], headers: dict[str, str]) -> None:
        super().__init__(relay.events(), media_type="text/event-stream", headers=headers)
        self.relay, self.finished = relay, finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.relay.aclose()
                try:
                    await self.finished(self.relay)
                except Exception:  # the stream is over; what could not be recorded is logged
                    log.exception("recording the end of a stream failed")


def _openai_error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


# -- keys ---------------------------------------------------------------------------------------
def _principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
) -> Principal:
    """The holder of the request's bearer key (401 without a valid one)."""
    service: Service = request.app.state.service
    found = service.keys.lookup(credentials.credentials if credentials is not None else "")
    if found is None:
        raise HTTPException(401, "missing or invalid bearer API key", headers={"WWW-Authenticate": "Bearer"})
    return found


def _tenant_key(who: Annotated[Principal, Depends(_principal)]) -> str:
    """The tenant of the request's key (403 for an admin key)."""
    if who.tenant is None:
        raise HTTPException(403, "an admin key neither routes nor grades; use a tenant's key")
    return who.tenant


def _admin_key(who: Annotated[Principal, Depends(_principal)]) -> None:
    if not who.admin:
        raise HTTPException(403, "this endpoint needs an admin key")


AnyKey = Annotated[Principal, Depends(_principal)]
TenantKey = Annotated[str, Depends(_tenant_key)]


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

    app = FastAPI(
        title="router-ml", version="0.1.0", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    app.state.service = service
    server = service.config.server
    app.add_middleware(BodyReader, max_bytes=server.max_body_bytes, timeout=server.body_timeout_seconds)
    app.add_middleware(Measure, metrics=service.metrics)
    metrics = service.metrics

    def own_tenant(asked: str | None, tenant: str) -> None:
        if asked is not None and asked != tenant:
            raise HTTPException(403, "'tenant': a key acts for its own tenant; omit 'tenant' or name the key's own")

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

    @app.exception_handler(LogUnavailable)
    async def unavailable(request: Request, exc: LogUnavailable) -> JSONResponse:
        """503 with the disk's own reason (full, read-only, locked); the client may retry."""
        log.error("%s", exc)
        body = {"detail": str(exc), "error": {"message": str(exc), "type": "service_unavailable"}}
        return JSONResponse(body, status_code=503, headers={"retry-after": "5"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process serves. ``status`` is ``degraded`` (and ``fault`` says why) while the decision
        log refuses writes."""
        learner = service.learner
        try:
            counts: dict[str, int] | None = await run_in_threadpool(service.log.counts)
        except LogUnavailable:
            counts = None
        fault = service.log.fault
        return {
            "status": "degraded" if fault else "ok",
            "fault": fault,
            "policy_version": learner.version,
            "feedback_applied": learner.applied,
            "log": counts,
        }

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 when the decision log takes a write now, else 503 with the reason."""
        fault = await run_in_threadpool(service.log.probe)
        if fault:
            return JSONResponse({"ready": False, "reason": f"decision log unavailable: {fault}"}, status_code=503)
        return JSONResponse({"ready": True})

    @app.post("/v1/route")
    async def route(req: RouteRequest, tenant: TenantKey) -> RouteResponse:
        own_tenant(req.tenant, tenant)
        record = await service.decide(req.prompt, req.candidates, req.lam, tenant)
        return RouteResponse(
            decision_id=record.decision_id,
            model=record.model,
            probability=record.propensity,
            distribution=record.distribution,
            policy_version=record.policy_version,
            **{"lambda": record.lam},
        )

    @app.post("/v1/feedback", status_code=202)
    async def feedback(req: FeedbackRequest, tenant: TenantKey) -> dict[str, str]:
        try:
            graded = await run_in_threadpool(
                lambda: service.learner.record_feedback(
                    req.decision_id, req.quality, req.cost_usd, tenant=tenant, cost_bound=service.cost_bound
                )
            )
        except UnknownDecision as exc:
            raise HTTPException(404, f"'decision_id': no decision '{req.decision_id}'") from exc
        except DuplicateFeedback as exc:
            raise HTTPException(409, f"'decision_id': decision '{req.decision_id}' already has feedback") from exc
        except AnswerInFlight as exc:
            raise HTTPException(409, f"'decision_id': {exc}") from exc
        except ClientCostRefused as exc:
            raise HTTPException(422, str(exc)) from exc
        metrics.feedback_lag.observe(max(graded.received_at - graded.created_at, 0.0))
        if req.cost_usd is not None:
            service.spent(graded.model, tenant, req.cost_usd)
        return {"decision_id": graded.decision_id, "status": "accepted"}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest, request: Request, tenant: TenantKey) -> Response:
        if req.model != ROUTER_MODEL:
            return _openai_error(400, f"'model' must be '{ROUTER_MODEL}' (got '{req.model}')", "invalid_request_error")
        catalog = service.router.policy.catalog
        offered = [m for m in catalog.names if m in service.forwarder.upstreams]
        if req.router_candidates is not None:
            unknown = sorted(set(req.router_candidates) - set(catalog.names))
            if unknown:
                message = f"'router_candidates': model(s) not in the catalog: {unknown[:5]}"
                return _openai_error(422, message, "invalid_request_error")
            offered = [m for m in offered if m in set(req.router_candidates)]
            if not offered:
                message = "'router_candidates': none of these models has an upstream endpoint"
                return _openai_error(422, message, "invalid_request_error")
        if not offered:
            return _openai_error(503, "no catalog model has an upstream endpoint", "server_error")
        lam = req.router_lambda
        header = request.headers.get("x-router-lambda")
        if lam is None and header is not None:
            lam = _header_lambda(header)
            if lam is None:
                message = f"header 'x-router-lambda' must be a number in [0, {MAX_LAMBDA:g}]"
                return _openai_error(422, message, "invalid_request_error")
        text = conversation_text(req.messages)
        if len(text) > MAX_PROMPT_CHARS:
            message = f"'messages': the conversation has {len(text)} characters, over the cap of {MAX_PROMPT_CHARS}"
            return _openai_error(422, message, "invalid_request_error")
        record = await service.decide(text, offered, lam, tenant, forwarded=True)
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
                relay = await service.forwarder.stream(ranking, body, text, include_usage=req.include_usage())
                _count_fallbacks(metrics, relay.failures)
                headers |= {"x-router-model": relay.model, "x-router-fallbacks": str(len(relay.failures))}

                async def finished(ended: Relay) -> None:
                    await service.metered(record, ended.model, ended.usage, ended.outcome or "disconnected")

                return RelayResponse(relay, finished, headers)
            answer = await service.forwarder.complete(ranking, body, text)
        except UpstreamFailed as exc:
            _count_fallbacks(metrics, exc.failures)
            await run_in_threadpool(service.log.record_usage, record.decision_id, "", 0.0, 0, 0, "failed")
            return _openai_error(502, str(exc), "upstream_error", headers)
        except ClientError as exc:
            await run_in_threadpool(service.log.record_usage, record.decision_id, "", 0.0, 0, 0, "failed")
            return _openai_error(exc.status, str(exc), "invalid_request_error", headers)
        _count_fallbacks(metrics, answer.failures)
        cost = await service.metered(record, answer.model, answer.usage, "answered")
        headers |= {
            "x-router-model": answer.model,
            "x-router-fallbacks": str(len(answer.failures)),
            "x-router-cost-usd": f"{cost:.8f}",
        }
        return JSONResponse(answer.body, headers=headers)

    @app.get("/v1/spend")
    async def spend(who: AnyKey) -> dict[str, Any]:
        """Spend by model and by cost source (``metered``, ``client``, ``estimate``): a tenant's key sees its own
        tenant's, an admin key every tenant's."""
        tenant = who.tenant
        found: dict[str, Any] = {
            "by_model": await run_in_threadpool(service.log.spend, "model", tenant),
            "by_source": await run_in_threadpool(service.log.spend, "source", tenant),
        }
        if who.admin:
            found["by_tenant"] = await run_in_threadpool(service.log.spend, "tenant")
        else:
            found["tenant"] = tenant
        return found | {
            "lambda": service.effective_lambda(None),
            "budget_usd_per_1k": service.config.budget.target_usd_per_1k,
        }

    @app.get("/v1/savings", dependencies=[Depends(_admin_key)])
    async def savings() -> dict[str, Any]:
        """Admin key: the router against the reference model on the graded decisions so far (doubly robust, with
        intervals; costs in USD per 1,000 requests), the quality floor's factor, and a day-one policy's state."""
        return service.learner.savings.report().to_dict() | {
            "quality_floor": service.config.target.quality_floor,
            "floor_factor": service.floor_factor(),
            "lambda": service.effective_lambda(None),
            "operating_point": service.router.policy.operating.label,
        } | _day_one(service)

    @app.get("/metrics", dependencies=[Depends(_admin_key)])
    async def prometheus() -> Response:
        metrics.show_savings(service.learner.savings.report(), service.floor_factor())
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    if server.openapi:

        @app.get("/openapi.json", dependencies=[Depends(_admin_key)], include_in_schema=False)
        async def openapi() -> dict[str, Any]:
            return app.openapi()

    return app


_PATHS = frozenset(
    {"/healthz", "/readyz", "/v1/route", "/v1/feedback", "/v1/chat/completions", "/v1/spend", "/v1/savings", "/metrics"}
)


def _day_one(service: Service) -> dict[str, Any]:
    """A day-one policy's prior, the state of its rule and its exploration spend (:mod:`router_ml.day_one`)."""
    prior = service.router.policy.prior
    return {"day_one": prior.report()} if prior is not None else {}


def _header_lambda(value: str) -> float | None:
    """The ``x-router-lambda`` header as a number within the body's bounds, else None."""
    try:
        lam = float(value)
    except ValueError:
        return None
    return lam if math.isfinite(lam) and 0 <= lam <= MAX_LAMBDA else None


def _count_fallbacks(metrics: Metrics, failures: list[Any]) -> None:
    for failure in failures:
        metrics.fallbacks.labels(metrics.model(failure.model)).inc()


async def _maintain(service: Service) -> None:
    """Every second: a time-based snapshot if due; every ``reload_poll_seconds``: has the alias moved (and, for a
    router replica, has the learner published a newer snapshot)?"""
    last_poll = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        try:
            await service.learner.tick()
            if time.monotonic() - last_poll >= service.config.learning.reload_poll_seconds:
                last_poll = time.monotonic()
                moved = await run_in_threadpool(service.learner.poll_alias)
                if service.role == "router":
                    moved = await run_in_threadpool(service.learner.refresh) or moved
                if moved:
                    log.info("reloaded: now serving %s", service.learner.version)
        except Exception:  # the service keeps serving the policy it has
            log.exception("maintenance failed")


def run(config_path: str | None, host: str | None = None, port: int | None = None, role: Role = "all") -> None:
    """Build the service and serve it with uvicorn (``router-ml serve``); a start-up fault is one line and exit 2."""
    import uvicorn

    config = ServeConfig.load(config_path)
    service = build_service(config, role=role)
    uvicorn.run(
        create_app(service),
        host=host or config.server.host,
        port=port if port is not None else config.server.port,
        log_level="info",
        access_log=False,
    )
