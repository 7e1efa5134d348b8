"""Forwarding OpenAI-style chat completions to the chosen provider, with fallback down the policy's ranking.

A model is tried until its first byte arrives: a connection error, a timeout, or a 408/429/5xx answer
moves on to the next model. Once bytes flow, the answer is that model's (a stream that breaks later is
cut, not retried, since the client has already seen part of it). Any other 4xx is the request's own
fault and goes back to the client. Error messages name the model and the failure, never a key or a
provider's error body.

The HTTP client takes any httpx transport, so tests can stand a ``MockTransport`` or a real loopback
server in for the providers.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from router_ml.catalog import Catalog
from router_ml.cost_model import estimate_tokens
from serve.config import ConfigError, UpstreamConfig

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Upstream:
    """Where one catalog model is served: a base URL (``.../v1``), its key, and the provider's model id."""

    model: str
    endpoint: str
    api_key: str | None
    upstream_model: str


def resolve_upstreams(catalog: Catalog, config: UpstreamConfig) -> dict[str, Upstream]:
    """Each catalog model that has an endpoint (config, else the catalog entry, else the config default)."""
    unknown = sorted(set(config.models) - set(catalog.names))
    if unknown:
        raise ConfigError(f"config: 'upstream.models' names model(s) not in the policy's catalog: {unknown}")
    found: dict[str, Upstream] = {}
    for spec in catalog.models:
        own = config.models.get(spec.name)
        endpoint = (own and own.endpoint) or spec.endpoint or config.endpoint
        if not endpoint:
            continue
        key_env = (own and own.api_key_env) or spec.api_key_env or config.api_key_env
        key = None
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise ConfigError(f"config: model '{spec.name}' needs an API key in ${key_env}, which is not set")
        found[spec.name] = Upstream(spec.name, endpoint.rstrip("/"), key, (own and own.upstream_model) or spec.name)
    return found


@dataclass
class Failure:
    """One attempt that did not produce a first byte."""

    model: str
    reason: str


class UpstreamFailed(Exception):
    """No model produced an answer; ``failures`` says why each attempt failed."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        tried = "; ".join(f"{f.model}: {f.reason}" for f in failures) or "no upstream configured"
        super().__init__(f"every upstream failed ({tried})")


class ClientError(Exception):
    """The provider refused the request itself (a non-retryable 4xx)."""

    def __init__(self, model: str, status: int) -> None:
        self.model, self.status = model, status
        super().__init__(f"upstream for '{model}' rejected the request with HTTP {status}")


@dataclass
class Usage:
    """Tokens an answer used, from the provider's ``usage`` or estimated from text (4 characters a token)."""

    input_tokens: int = 0
    output_tokens: int = 0
    metered: bool = False


@dataclass
class Answer:
    """A completed (non-streamed) answer."""

    model: str
    body: dict[str, Any]
    usage: Usage
    failures: list[Failure]


@dataclass
class StreamedAnswer:
    """A streamed answer whose first chunk has arrived; iterate ``chunks`` to pass it on."""

    model: str
    chunks: AsyncIterator[bytes]
    usage: Usage
    failures: list[Failure]


class Forwarder:
    """Sends chat completions to upstreams in ranking order until one answers."""

    def __init__(
        self,
        upstreams: dict[str, Upstream],
        config: UpstreamConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.max_attempts = config.max_attempts
        timeout = httpx.Timeout(
            connect=config.connect_timeout_seconds,
            read=config.first_byte_timeout_seconds,
            write=config.connect_timeout_seconds,
            pool=config.connect_timeout_seconds,
        )
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def _request(self, up: Upstream, body: dict[str, Any]) -> httpx.Request:
        headers = {"content-type": "application/json"}
        if up.api_key:
            headers["authorization"] = f"Bearer {up.api_key}"
        payload = {**body, "model": up.upstream_model}
        return self._client.build_request("POST", f"{up.endpoint}/chat/completions", json=payload, headers=headers)

    def _order(self, ranking: Sequence[str]) -> list[Upstream]:
        return [self.upstreams[m] for m in ranking if m in self.upstreams][: self.max_attempts]

    async def complete(self, ranking: Sequence[str], body: dict[str, Any], prompt_text: str) -> Answer:
        """A non-streamed completion from the first model in ``ranking`` that answers."""
        failures: list[Failure] = []
        for up in self._order(ranking):
            try:
                resp = await self._client.send(self._request(up, {**body, "stream": False}))
            except httpx.HTTPError as exc:
                failures.append(Failure(up.model, _describe(exc)))
                continue
            if resp.status_code in RETRYABLE:
                failures.append(Failure(up.model, f"HTTP {resp.status_code}"))
                continue
            if resp.status_code >= 400:
                raise ClientError(up.model, resp.status_code)
            try:
                answer = resp.json()
            except ValueError:
                failures.append(Failure(up.model, "answer is not JSON"))
                continue
            if not isinstance(answer, dict):
                failures.append(Failure(up.model, "answer is not a JSON object"))
                continue
            answer["model"] = up.model
            return Answer(up.model, answer, _usage(answer, prompt_text), failures)
        raise UpstreamFailed(failures)

    async def stream(self, ranking: Sequence[str], body: dict[str, Any], prompt_text: str) -> StreamedAnswer:
        """A streamed completion: returns once a model's first chunk arrived (falling back until one does)."""
        failures: list[Failure] = []
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
        for up in self._order(ranking):
            resp: httpx.Response | None = None
            try:
                resp = await self._client.send(self._request(up, streamed), stream=True)
                if resp.status_code in RETRYABLE:
                    failures.append(Failure(up.model, f"HTTP {resp.status_code}"))
                    await resp.aclose()
                    continue
                if resp.status_code >= 400:
                    await resp.aclose()
                    raise ClientError(up.model, resp.status_code)
                raw = resp.aiter_raw()
                first = await anext(raw)
            except (httpx.HTTPError, StopAsyncIteration) as exc:
                failures.append(Failure(up.model, _describe(exc) if isinstance(exc, httpx.HTTPError) else "empty"))
                if resp is not None:
                    await resp.aclose()
                continue
            usage = Usage(input_tokens=estimate_tokens(prompt_text))
            answer = StreamedAnswer(up.model, _relay(resp, first, raw, usage), usage, failures)
            return answer
        raise UpstreamFailed(failures)


async def _relay(resp: httpx.Response, first: bytes, rest: AsyncIterator[bytes], usage: Usage) -> AsyncIterator[bytes]:
    """Pass the stream on byte for byte while reading its server-sent events for usage and content length."""
    parser = _SseUsage(usage)
    try:
        parser.feed(first)
        yield first
        async for chunk in rest:
            parser.feed(chunk)
            yield chunk
    finally:
        await resp.aclose()
        parser.finish()


class _SseUsage:
    """Reads ``data:`` events of an OpenAI stream: the final ``usage`` object, else the streamed text's length."""

    def __init__(self, usage: Usage) -> None:
        self.usage = usage
        self._buffer = b""
        self._chars = 0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        if data == b"[DONE]":
            return
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if isinstance(msg.get("usage"), dict):
            _metered(self.usage, msg["usage"])
        for choice in msg.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                content = choice["delta"].get("content")
                if isinstance(content, str):
                    self._chars += len(content)

    def finish(self) -> None:
        if not self.usage.metered:
            self.usage.output_tokens = max(1, round(self._chars / 4)) if self._chars else 0


def _metered(usage: Usage, raw: dict[str, Any]) -> None:
    try:
        usage.input_tokens = int(raw["prompt_tokens"])
        usage.output_tokens = int(raw["completion_tokens"])
        usage.metered = True
    except (KeyError, TypeError, ValueError):
        pass


def _usage(answer: dict[str, Any], prompt_text: str) -> Usage:
    usage = Usage(input_tokens=estimate_tokens(prompt_text))
    if isinstance(answer.get("usage"), dict):
        _metered(usage, answer["usage"])
    if not usage.metered:
        text = "".join(
            str((c.get("message") or {}).get("content") or "")
            for c in answer.get("choices") or []
            if isinstance(c, dict)
        )
        usage.output_tokens = estimate_tokens(text) if text else 0
    return usage


def _describe(exc: BaseException) -> str:
    """A failure's kind, without the URL or headers (which may carry secrets)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout before the first byte"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return type(exc).__name__
