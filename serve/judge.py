"""The grader a service configuration names (``[grader]``), how its jobs are retried, and the judge's call to its
upstream.

:func:`make_grader` builds the :class:`~router_ml.graders.Grader` of ``[grader]``: a reference or form check, or an
:class:`~router_ml.graders.LLMJudge` whose ``complete`` is a :class:`JudgeClient`: one chat completion at
temperature 0 to the judge model's upstream (the endpoint, key and provider model id the service forwards to), paid
at the judge model's catalog prices. Both the service's background grading (:mod:`serve.grading`) and
``router-ml grade`` use it. A transport failure, a timeout, a 429 (with its ``Retry-After``), another error status or
an answer that is not a chat completion raises :class:`~router_ml.graders.GradeFailed` naming the judge model, never
the endpoint, its key or the provider's error body.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

from router_ml.catalog import Catalog, ModelSpec
from router_ml.errors import InvalidInput
from router_ml.graders import (
    ExactMatch,
    GradeFailed,
    Grader,
    JsonSchemaValid,
    JsonValid,
    LLMJudge,
    NumericMatch,
    RegexMatch,
    Retry,
)
from serve.config import ConfigError, GraderConfig
from serve.upstream import Upstream, answer_usage, describe, message_text, strict_json

G = TypeVar("G")
JUDGE_MAX_TOKENS = 512
"""Room for a verdict: a score and one or two sentences of rationale."""


class JudgeClient:
    """``complete(message) -> (reply, cost_usd)`` for :class:`~router_ml.graders.LLMJudge`, over one upstream."""

    def __init__(
        self,
        upstream: Upstream,
        spec: ModelSpec,
        *,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.upstream, self.spec = upstream, spec
        self._client = httpx.Client(transport=transport, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __call__(self, message: str) -> tuple[str, float]:
        up, who = self.upstream, f"judge '{self.upstream.model}'"
        headers = {"authorization": f"Bearer {up.api_key}"} if up.api_key else {}
        body = {
            "model": up.upstream_model,
            "messages": [{"role": "user", "content": message}],
            "temperature": 0,
            "max_tokens": JUDGE_MAX_TOKENS,
        }
        try:
            resp = self._client.post(f"{up.endpoint}/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise GradeFailed(f"{who}: {describe(exc)}") from exc
        if resp.status_code == 429:
            raise GradeFailed(f"{who}: HTTP 429 (rate-limited)", retry_after=retry_after(resp.headers))
        if resp.status_code >= 400:
            raise GradeFailed(f"{who}: HTTP {resp.status_code}")
        try:
            answer = strict_json(resp.content)
        except ValueError as exc:
            raise GradeFailed(f"{who}: the answer is not JSON") from exc
        reply = message_text(answer)
        usage = answer_usage(answer, message) if isinstance(answer, dict) else None
        if reply is None or usage is None:
            raise GradeFailed(f"{who}: the answer is not a chat completion")
        return reply, self.spec.cost_usd(usage.input_tokens, usage.output_tokens)


def retry_after(headers: httpx.Headers) -> float | None:
    """A ``Retry-After`` header in seconds (it may be a number of seconds or an HTTP date); None if absent or bad."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if seconds == seconds else None


def retry_for(config: GraderConfig) -> Retry:
    """How a job of ``config``'s grader is retried: a judge's failures may pass (``max_attempts``, ``backoff_seconds``);
    a check gives the same answer every time, so its failure is final at once."""
    if config.kind != "judge":
        return Retry(1)
    return Retry(config.max_attempts, config.backoff_seconds)


def make_grader(
    config: GraderConfig,
    catalog: Catalog,
    upstreams: dict[str, Upstream],
    *,
    transport: httpx.BaseTransport | None = None,
) -> Grader | None:
    """The grader ``config`` names (None without a ``kind``); a judge model must be in ``catalog`` with an upstream.
    Files named by ``template`` and ``schema`` are read now, so a mistake stops start-up with one line."""
    kind = config.kind
    if kind is None:
        return None
    if kind == "exact":
        return ExactMatch()
    if kind == "regex":
        return RegexMatch()
    if kind == "numeric":
        return _checked(lambda: NumericMatch(config.rel_tol, config.abs_tol), "grader")
    if kind == "json":
        return JsonValid()
    if kind == "json-schema":
        try:
            schema = json.loads(_read(config.schema_, "grader.schema"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config: 'grader.schema' {config.schema_} is not JSON: {exc.msg}") from exc
        if not isinstance(schema, dict):
            raise ConfigError(f"config: 'grader.schema' {config.schema_} must hold a JSON object")
        return _checked(lambda: JsonSchemaValid(schema), "grader.schema")
    model = config.judge_model
    if model not in catalog:
        raise ConfigError(f"config: 'grader.judge_model' {model!r} is not in the policy's catalog")
    if model not in upstreams:
        raise ConfigError(f"config: 'grader.judge_model' {model!r} has no upstream endpoint")
    client = JudgeClient(upstreams[model], catalog.spec(model), timeout=config.timeout_seconds, transport=transport)
    if not config.template:
        return LLMJudge(client, model)
    template = _read(config.template, "grader.template")
    return _checked(lambda: LLMJudge(client, model, template), "grader.template")


def _read(path: str, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: '{field}' cannot be read: {path}: {exc}") from exc


def _checked(build: Callable[[], G], field: str) -> G:
    """``build()``, with its :class:`InvalidInput` as a config error naming ``field``."""
    try:
        return build()
    except InvalidInput as exc:
        raise ConfigError(f"config: '{field}': {exc}") from exc
