"""One OpenAI chat completion through the router, in named steps: validate, route, rank, forward (or stream), meter,
and map what went wrong to an OpenAI-style error.

:meth:`ChatFlow.run` returns a :class:`ChatAnswer` or a :class:`ChatStream` and raises :class:`ChatRefused`;
:mod:`serve.app` turns each into its HTTP response. Nothing here knows about HTTP beyond the status codes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from router_ml.decision_log import DecisionRecord
from router_ml.policy import Decision
from serve.bodies import (
    EXTENSIONS,
    MAX_LAMBDA,
    MAX_PROMPT_CHARS,
    ROUTER_MODEL,
    ChatRequest,
    conversation_text,
    header_lambda,
)
from serve.service import Service
from serve.upstream import ClientError, Relay, UpstreamFailed


class ChatRefused(Exception):
    """The request gets an OpenAI-style error: ``{"error": {"message", "type"}}`` with this status and headers."""

    def __init__(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers


def _invalid(message: str) -> ChatRefused:
    return ChatRefused(422, message, "invalid_request_error")


@dataclass(frozen=True)
class ChatAnswer:
    """A whole answer: the upstream's body, and the router's headers."""

    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class ChatStream:
    """A relayed stream; ``finished`` meters it once it ends, however it ends."""

    relay: Relay
    finished: Callable[[Relay], Awaitable[None]]
    headers: dict[str, str]


def fallback_order(record: DecisionRecord) -> list[str]:
    """The models to try: the sampled one first (its propensity is what was logged), then the rest of the decision's
    ranking (:meth:`~router_ml.policy.Decision.ranking`, most likely first)."""
    ranking = Decision(record.model, record.propensity, record.distribution).ranking()
    return [record.model, *(m for m in ranking if m != record.model)]


def decision_headers(record: DecisionRecord) -> dict[str, str]:
    return {
        "x-router-decision-id": record.decision_id,
        "x-router-policy-version": record.policy_version,
        "x-router-chosen": record.model,
    }


class ChatFlow:
    """``POST /v1/chat/completions`` over a :class:`~serve.service.Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def run(self, req: ChatRequest, lambda_header: str | None, tenant: str) -> ChatAnswer | ChatStream:
        """Validate, route, rank, then forward (or stream) down the ranking and meter what it cost."""
        if req.model != ROUTER_MODEL:
            raise ChatRefused(400, f"'model' must be '{ROUTER_MODEL}' (got '{req.model}')", "invalid_request_error")
        offered = self.offered(req.router_candidates)
        lam = self.cost_weight(req.router_lambda, lambda_header)
        text = self.conversation(req)
        record = await self.service.decide(text, offered, lam, tenant, forwarded=True)
        body = req.model_dump(exclude=set(EXTENSIONS), exclude_none=True)
        try:
            if req.stream:
                return await self.stream(record, body, text, req.router_reference, include_usage=req.include_usage())
            return await self.answer(record, body, text, req.router_reference)
        except UpstreamFailed as exc:
            self.count_fallbacks(exc.failures)
            await self.service.failed(record)
            raise ChatRefused(502, str(exc), "upstream_error", decision_headers(record)) from exc
        except ClientError as exc:
            await self.service.failed(record)
            raise ChatRefused(exc.status, str(exc), "invalid_request_error", decision_headers(record)) from exc

    # -- validate -------------------------------------------------------------------------------
    def offered(self, asked: list[str] | None) -> list[str]:
        """The catalog models with an upstream endpoint, narrowed to the request's ``router_candidates``."""
        catalog = self.service.router.policy.catalog
        offered = [m for m in catalog.names if m in self.service.forwarder.upstreams]
        if asked is not None:
            unknown = sorted(set(asked) - set(catalog.names))
            if unknown:
                raise _invalid(f"'router_candidates': model(s) not in the catalog: {unknown[:5]}")
            offered = [m for m in offered if m in set(asked)]
            if not offered:
                raise _invalid("'router_candidates': none of these models has an upstream endpoint")
        if not offered:
            raise ChatRefused(503, "no catalog model has an upstream endpoint", "server_error")
        return offered

    @staticmethod
    def cost_weight(in_body: float | None, header: str | None) -> float | None:
        """The request's own lambda: ``router_lambda`` in the body, else the ``x-router-lambda`` header, else None."""
        if in_body is not None or header is None:
            return in_body
        lam = header_lambda(header)
        if lam is None:
            raise _invalid(f"header 'x-router-lambda' must be a number in [0, {MAX_LAMBDA:g}]")
        return lam

    @staticmethod
    def conversation(req: ChatRequest) -> str:
        """The text the router embeds, within the prompt cap."""
        text = conversation_text(req.messages)
        if len(text) > MAX_PROMPT_CHARS:
            raise _invalid(
                f"'messages': the conversation has {len(text)} characters, over the cap of {MAX_PROMPT_CHARS}"
            )
        return text

    # -- forward, stream, meter -----------------------------------------------------------------
    async def answer(
        self, record: DecisionRecord, body: dict[str, Any], text: str, reference: str | None
    ) -> ChatAnswer:
        """A whole answer from the first model down the ranking that gives one, metered (and perhaps sampled for
        grading, with ``reference``)."""
        answer = await self.service.forwarder.complete(fallback_order(record), body, text)
        self.count_fallbacks(answer.failures)
        cost = await self.service.metered(record, answer.model, answer.usage, "answered", answer.text, reference)
        headers = decision_headers(record) | {
            "x-router-model": answer.model,
            "x-router-fallbacks": str(len(answer.failures)),
            "x-router-cost-usd": f"{cost:.8f}",
        }
        return ChatAnswer(answer.body, headers)

    async def stream(
        self, record: DecisionRecord, body: dict[str, Any], text: str, reference: str | None, *, include_usage: bool
    ) -> ChatStream:
        """A stream from the first model down the ranking that starts one; metered (and perhaps sampled for grading,
        with ``reference``) when it ends."""
        relay = await self.service.forwarder.stream(fallback_order(record), body, text, include_usage=include_usage)
        self.count_fallbacks(relay.failures)
        headers = decision_headers(record) | {
            "x-router-model": relay.model,
            "x-router-fallbacks": str(len(relay.failures)),
        }

        async def finished(ended: Relay) -> None:
            outcome = ended.outcome or "disconnected"
            await self.service.metered(record, ended.model, ended.usage, outcome, ended.text, reference)

        return ChatStream(relay, finished, headers)

    def count_fallbacks(self, failures: list[Any]) -> None:
        metrics = self.service.metrics
        for failure in failures:
            metrics.fallbacks.labels(metrics.model(failure.model)).inc()
