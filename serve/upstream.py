"""Forwarding OpenAI-style chat completions to the chosen provider, with fallback down the policy's ranking.

A model is tried until its first byte arrives: a connection error, a timeout, a 408/429/5xx answer, or a
complete answer that is not strict JSON (``NaN`` is not JSON) or whose usage is not a count of tokens
moves on to the next model. Once bytes flow, the answer is that model's: a stream that breaks, stalls or
ends without ``[DONE]`` is cut, not retried (the client has already seen part of it), and the client gets
an error event the OpenAI SDKs raise, with no ``[DONE]``. Streamed chunks are passed on as the plain
answer is: named by the catalog model, the usage chunk only when the client asked for it
(``stream_options.include_usage``; the upstream is always asked, to meter the call). Any other 4xx is the
request's own fault and goes back to the client. Error messages name the model and the failure, never a
key or a provider's error body.

The HTTP client takes any httpx transport, so tests can stand a ``MockTransport`` or a real loopback
server in for the providers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from router_ml.catalog import Catalog
from router_ml.cost_model import estimate_tokens
from router_ml.errors import InvalidInput
from serve.config import ConfigError, UpstreamConfig

RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
MAX_TOKENS = 10_000_000
"""Usage counts above this are not believed (no call uses ten million tokens)."""
StreamOutcome = Literal["answered", "cut", "disconnected"]


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

    @property
    def text(self) -> str:
        """The first choice's message text ("" when it has none)."""
        return message_text(self.body) or ""


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
                failures.append(Failure(up.model, describe(exc)))
                continue
            if resp.status_code in RETRYABLE:
                failures.append(Failure(up.model, f"HTTP {resp.status_code}"))
                continue
            if resp.status_code >= 400:
                raise ClientError(up.model, resp.status_code)
            try:
                answer = strict_json(resp.content)
            except ValueError:
                failures.append(Failure(up.model, "answer is not JSON"))
                continue
            if not isinstance(answer, dict):
                failures.append(Failure(up.model, "answer is not a JSON object"))
                continue
            usage = answer_usage(answer, prompt_text)
            if usage is None:
                failures.append(Failure(up.model, "answer's usage is not a count of tokens"))
                continue
            answer["model"] = up.model
            return Answer(up.model, answer, usage, failures)
        raise UpstreamFailed(failures)

    async def stream(
        self, ranking: Sequence[str], body: dict[str, Any], prompt_text: str, *, include_usage: bool
    ) -> Relay:
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
                chunks = resp.aiter_bytes()
                first = await anext(chunks)
            except (httpx.HTTPError, StopAsyncIteration) as exc:
                failures.append(Failure(up.model, describe(exc) if isinstance(exc, httpx.HTTPError) else "empty"))
                if resp is not None:
                    await resp.aclose()
                continue
            usage = Usage(input_tokens=estimate_tokens(prompt_text))
            return Relay(up.model, resp, first, chunks, usage, failures, include_usage=include_usage)
        raise UpstreamFailed(failures)


class Relay:
    """A streamed answer whose first chunk has arrived: :meth:`events` passes it on as OpenAI chunks.

    ``outcome`` is None while it streams, then ``answered`` (the upstream sent ``[DONE]``), ``cut`` (it broke
    off, stalled or ended early: the client got an error event and no ``[DONE]``) or ``disconnected`` (the
    client left first). ``usage`` is the upstream's count, else estimated from the text relayed so far.
    """

    def __init__(
        self,
        model: str,
        resp: httpx.Response,
        first: bytes,
        rest: AsyncIterator[bytes],
        usage: Usage,
        failures: list[Failure],
        *,
        include_usage: bool,
    ) -> None:
        self.model, self.usage, self.failures = model, usage, failures
        self.outcome: StreamOutcome | None = None
        self._resp, self._first, self._rest = resp, first, rest
        self._include_usage = include_usage
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """The answer's text relayed so far."""
        return "".join(self._parts)

    async def events(self) -> AsyncIterator[bytes]:
        """The client's server-sent events; however the stream ends, the upstream response is closed."""
        try:
            async for event in self._relayed():
                yield event
        finally:
            await self.aclose()

    async def _relayed(self) -> AsyncIterator[bytes]:
        buffer, done = b"", False
        try:
            async for chunk in _prepend(self._first, self._rest):
                *events, buffer = (buffer + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
                for event in events:
                    data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
                    if data == b"[DONE]":
                        done = True
                        yield b"data: [DONE]\n\n"
                    elif data and not done:
                        out = self._chunk(data)
                        if out is not None:
                            yield out
        except httpx.HTTPError as exc:
            reason = "stalled" if isinstance(exc, httpx.TimeoutException) else "broke off"
        except ValueError as exc:
            reason = f"sent {exc}"
        else:
            if done:
                self.outcome = "answered"
                return
            reason = "ended the stream before it was complete"
        self.outcome = "cut"
        message = f"upstream for '{self.model}' {reason}; the answer is incomplete"
        yield b"data: " + json.dumps({"error": {"message": message, "type": "upstream_error"}}).encode() + b"\n\n"

    def _chunk(self, data: bytes) -> bytes | None:
        """One upstream chunk as the client gets it (None: nothing for the client); ValueError names what is wrong."""
        try:
            msg = strict_json(data)
        except ValueError:
            raise InvalidInput("a chunk that is not JSON") from None
        if not isinstance(msg, dict):
            raise InvalidInput("a chunk that is not a JSON object")
        if isinstance(msg.get("error"), dict):  # the upstream's own error event
            raise InvalidInput("an error event")
        if not isinstance(msg.get("choices", []), list):
            raise InvalidInput("a chunk whose 'choices' is not a list")
        for choice in msg.get("choices") or []:
            if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                content = choice["delta"].get("content")
                if isinstance(content, str):
                    self._parts.append(content)
        if isinstance(msg.get("usage"), dict):
            metered = _metered(msg["usage"])
            if metered is not None:
                self.usage.input_tokens, self.usage.output_tokens = metered
                self.usage.metered = True
        if not self._include_usage:
            msg.pop("usage", None)
            if not msg.get("choices"):
                return None
        msg["model"] = self.model
        return b"data: " + json.dumps(msg, ensure_ascii=False).encode() + b"\n\n"

    async def aclose(self) -> None:
        """Close the upstream response (a client that left ends the stream as ``disconnected``)."""
        if self.outcome is None:
            self.outcome = "disconnected"
        if not self.usage.metered:
            chars = sum(len(part) for part in self._parts)
            self.usage.output_tokens = max(1, round(chars / 4)) if chars else 0
        await self._resp.aclose()


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def strict_json(data: bytes | str) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (not JSON, and not forwardable as JSON)."""
    return json.loads(data, parse_constant=_not_json)


def _not_json(constant: str) -> Any:
    raise InvalidInput(f"{constant} is not JSON")


def _metered(raw: dict[str, Any]) -> tuple[int, int] | None:
    """The (prompt, completion) token counts of an OpenAI ``usage`` object; None unless both are counts."""
    counts = (raw.get("prompt_tokens"), raw.get("completion_tokens"))
    ok = all(
        isinstance(n, int | float)
        and not isinstance(n, bool)
        and math.isfinite(n)
        and 0 <= n <= MAX_TOKENS
        and n == int(n)
        for n in counts
    )
    return (int(counts[0]), int(counts[1])) if ok else None  # type: ignore[arg-type]


def answer_usage(answer: dict[str, Any], prompt_text: str) -> Usage | None:
    """The usage of a complete answer (estimated from text when it has none); None if it has an invalid one."""
    usage = Usage(input_tokens=estimate_tokens(prompt_text))
    raw = answer.get("usage")
    if raw is not None:
        counted = isinstance(raw, dict) and ("prompt_tokens" in raw or "completion_tokens" in raw)
        metered = _metered(raw) if counted else None
        if metered is None and (counted or not isinstance(raw, dict)):
            return None
        if metered is not None:
            usage.input_tokens, usage.output_tokens = metered
            usage.metered = True
            return usage
    text = "".join(
        str((c.get("message") or {}).get("content") or "") for c in answer.get("choices") or [] if isinstance(c, dict)
    )
    usage.output_tokens = estimate_tokens(text) if text else 0
    return usage


def message_text(answer: Any) -> str | None:
    """The first choice's message text of a chat completion, or None."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def describe(exc: BaseException) -> str:
    """A failure's kind, without the URL or headers (which may carry secrets)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout before the first byte"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return type(exc).__name__
