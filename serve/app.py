"""The HTTP service: route, feedback, OpenAI-compatible chat completions, spend, savings, health, readiness, metrics.

Each handler parses (FastAPI and the bodies of :mod:`serve.bodies`), calls one method of
:class:`~serve.service.Service` (or :class:`~serve.chat.ChatFlow`) and formats the answer; what a request does lives
there, and start-up in :mod:`serve.startup`.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from router_ml.log_store import LogUnavailable
from serve.auth import Principal
from serve.bodies import ChatRequest, FeedbackRequest, RouteRequest, RouteResponse
from serve.chat import ChatFlow, ChatRefused, ChatStream
from serve.config import ServeConfig
from serve.middleware import BodyReader, Measure
from serve.service import Refused, Role, Service
from serve.startup import build_service
from serve.upstream import Relay

log = logging.getLogger("router_ml.serve")

_BEARER = HTTPBearer(auto_error=False)  # module level: FastAPI resolves the (string) annotations in this namespace


# -- what a handler is given --------------------------------------------------------------------
def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _chat_flow(request: Request) -> ChatFlow:
    flow: ChatFlow = request.app.state.chat
    return flow


def _principal(
    service: Annotated[Service, Depends(_service)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Principal:
    """The holder of the request's bearer key (401 without a valid one)."""
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


Svc = Annotated[Service, Depends(_service)]
Flow = Annotated[ChatFlow, Depends(_chat_flow)]
AnyKey = Annotated[Principal, Depends(_principal)]
TenantKey = Annotated[str, Depends(_tenant_key)]
ADMIN_ONLY = [Depends(_admin_key)]

# -- the endpoints ------------------------------------------------------------------------------
endpoints = APIRouter()


@endpoints.get("/healthz")
async def healthz(service: Svc) -> dict[str, Any]:
    """Liveness: the process serves. ``status`` is ``degraded`` (and ``fault`` says why) while the decision
    log refuses writes."""
    return await service.health()


@endpoints.get("/readyz")
async def readyz(service: Svc) -> JSONResponse:
    """Readiness: 200 when the decision log takes a write now, else 503 with the reason."""
    reason = await service.unready()
    if reason:
        return JSONResponse({"ready": False, "reason": reason}, status_code=503)
    return JSONResponse({"ready": True})


@endpoints.post("/v1/route")
async def route(req: RouteRequest, tenant: TenantKey, service: Svc) -> RouteResponse:
    record = await service.route(req, tenant)
    return RouteResponse(
        decision_id=record.decision_id,
        model=record.model,
        probability=record.propensity,
        distribution=record.distribution,
        policy_version=record.policy_version,
        **{"lambda": record.lam},
    )


@endpoints.post("/v1/feedback", status_code=202)
async def feedback(req: FeedbackRequest, tenant: TenantKey, service: Svc) -> dict[str, str]:
    graded = await service.grade(req, tenant)
    return {"decision_id": graded.decision_id, "status": "accepted"}


@endpoints.post("/v1/chat/completions", response_model=None)
async def chat(req: ChatRequest, request: Request, tenant: TenantKey, flow: Flow) -> Response:
    reply = await flow.run(req, request.headers.get("x-router-lambda"), tenant)
    if isinstance(reply, ChatStream):
        return RelayResponse(reply.relay, reply.finished, reply.headers)
    return JSONResponse(reply.body, headers=reply.headers)


@endpoints.get("/v1/spend")
async def spend(who: AnyKey, service: Svc) -> dict[str, Any]:
    """Spend by model and by cost source (``metered``, ``client``, ``estimate``): a tenant's key sees its own
    tenant's, an admin key every tenant's."""
    return await service.spend(who)


@endpoints.get("/v1/savings", dependencies=ADMIN_ONLY)
async def savings(service: Svc) -> dict[str, Any]:
    """Admin key: the router against the reference model on the graded decisions so far (doubly robust, with
    intervals; costs in USD per 1,000 requests), and the quality floor's factor."""
    return service.savings()


@endpoints.get("/metrics", dependencies=ADMIN_ONLY)
async def prometheus(service: Svc) -> Response:
    return Response(service.prometheus(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> dict[str, Any]:
    """The OpenAPI spec, to admin keys, when ``server.openapi`` is on."""
    spec: dict[str, Any] = request.app.openapi()
    return spec


# -- errors -------------------------------------------------------------------------------------
async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field; the offending input is not echoed (it may be huge, secret or not JSON)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with the disk's own reason (full, read-only, locked); the client may retry."""
    log.error("%s", exc)
    body = {"detail": str(exc), "error": {"message": str(exc), "type": "service_unavailable"}}
    return JSONResponse(body, status_code=503, headers={"retry-after": "5"})


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    """A request the service turned down: its status, and ``detail`` naming the field."""
    assert isinstance(exc, Refused)
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


async def _chat_refused(request: Request, exc: Exception) -> JSONResponse:
    """A chat request turned down, as OpenAI's clients expect: ``{"error": {"message", "type"}}``."""
    assert isinstance(exc, ChatRefused)
    body = {"error": {"message": exc.message, "type": exc.kind}}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


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


# -- the app ------------------------------------------------------------------------------------
def create_app(service: Service) -> FastAPI:
    """The FastAPI app over a built :class:`Service`: the endpoints, the error mapping, the body and measuring
    middleware, and the background tasks (maintenance, grading) for the app's lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(work) for work in service.background()]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await service.close()

    app = FastAPI(
        title="router-ml", version="0.1.0", lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None
    )
    app.state.service, app.state.chat = service, ChatFlow(service)
    server = service.config.server
    app.add_middleware(BodyReader, max_bytes=server.max_body_bytes, timeout=server.body_timeout_seconds)
    app.add_middleware(Measure, metrics=service.metrics)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(LogUnavailable, _unavailable)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(ChatRefused, _chat_refused)
    app.include_router(endpoints)
    if server.openapi:
        app.add_api_route("/openapi.json", openapi, dependencies=ADMIN_ONLY, include_in_schema=False)
    return app


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
