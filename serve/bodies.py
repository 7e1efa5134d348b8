"""The bodies of the service's HTTP requests and answers, and the checks on what a client sends.

Every bound is here (prompt length, cost weight, list sizes) so that bad input is a 4xx naming the field, never a
5xx; a chat request is checked to be forwardable as JSON (valid Unicode, finite numbers) before anything is decided.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_ml.errors import InvalidInput
from router_ml.graders import rating, thumbs

MAX_PROMPT_CHARS = 200_000
MAX_LAMBDA = 1e6
ROUTER_MODEL = "router"
EXTENSIONS = frozenset({"router_lambda", "router_candidates", "router_reference"})
"""The request fields the router reads and does not forward."""
Text = Annotated[str, Field(min_length=1, max_length=256)]


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
    """The grade of one decision's answer, and for a route-only decision optionally what the call cost.

    The grade is one of: ``quality`` in [0, 1]; ``thumbs`` ``"up"`` (1) or ``"down"`` (0); ``rating`` 1-5, mapped
    to ``(rating - 1) / 4`` (:func:`router_ml.graders.rating`). Which one the client sent is stored with the grade.
    """

    model_config = ConfigDict(extra="forbid")
    decision_id: Text
    quality: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    thumbs: Literal["up", "down"] | None = None
    rating: int | None = Field(default=None, ge=1, le=5, strict=True)
    cost_usd: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_grade(self) -> FeedbackRequest:
        given = [name for name in ("quality", "thumbs", "rating") if getattr(self, name) is not None]
        if len(given) != 1:
            raise InvalidInput(f"'quality': give exactly one of quality, thumbs or rating (got {given or 'none'})")
        return self

    def graded(self) -> tuple[float, str]:
        """The quality in [0, 1] and the signal it came from (``quality``, ``thumbs`` or ``rating-5``)."""
        if self.thumbs is not None:
            return thumbs(self.thumbs == "up"), "thumbs"
        if self.rating is not None:
            return rating(self.rating), "rating-5"
        assert self.quality is not None
        return self.quality, "quality"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Text
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """An OpenAI chat completion request; ``model`` must be ``router``. Other fields pass through.

    Optional extensions (``extra_body`` in the OpenAI SDK), never forwarded: ``router_lambda``, the cost weight of
    this request (also the ``x-router-lambda`` header); ``router_candidates``, the models it may use; and
    ``router_reference``, a reference answer for the reference checks of background grading (:mod:`serve.grading`).
    """

    model_config = ConfigDict(extra="allow")
    model: Text
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    router_lambda: float | None = Field(default=None, ge=0, le=MAX_LAMBDA, allow_inf_nan=False)
    router_candidates: list[Text] | None = Field(default=None, min_length=1, max_length=1000)
    router_reference: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
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


def header_lambda(value: str) -> float | None:
    """The ``x-router-lambda`` header as a number within the body's bounds, else None."""
    try:
        lam = float(value)
    except ValueError:
        return None
    return lam if math.isfinite(lam) and 0 <= lam <= MAX_LAMBDA else None
