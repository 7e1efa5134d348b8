"""Graders: turn (request, answer, optional reference) into a quality in [0, 1], or a clear failure.

Every grader has a ``name`` and a ``version`` (logged with the grade it gives) and one method,
:meth:`Grader.grade`, which returns a :class:`Grade` or raises :class:`GradeFailed` with the reason. A grader
never guesses: an answer it cannot judge (an unparseable verdict, a missing reference, a value outside [0, 1] or
NaN) is a failure, and nothing is learned from it.

Built-ins:

- :class:`LLMJudge`: any chat model through a ``complete`` function (the service passes its own upstream client),
  a rubric asking for an absolute score from 1 to 10 with a short rationale as JSON, parsed strictly; temperature 0
  is the caller's contract. Quality is ``(score - 1) / 9``.
- Reference checks against a reference answer: :class:`ExactMatch` (after normalisation), :class:`RegexMatch`,
  :class:`NumericMatch` (within a tolerance); and checks of the answer's form: :class:`JsonValid`,
  :class:`JsonSchemaValid`.
- User signals: :func:`thumbs` and :func:`rating` map a thumbs up/down and a 1-5 rating to [0, 1].
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from router_ml.errors import InvalidInput, RouterMLError


class GradeFailed(RouterMLError):
    """A grader could not grade; the message is the reason (it is logged with the failed job).

    ``retry_after`` is how long the grader's backend asked to be left alone (a 429's ``Retry-After``), in seconds;
    ``cost_usd`` what the failed attempt still cost (a judge paid for an answer it could not parse)."""

    def __init__(self, message: str, *, retry_after: float | None = None, cost_usd: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after, self.cost_usd = retry_after, cost_usd


@dataclass(frozen=True)
class GradeRequest:
    """What a grader sees: the prompt as text, the answer, and the reference answer if the request carried one."""

    prompt: str
    answer: str
    reference: str | None = None


@dataclass(frozen=True)
class Grade:
    """A quality in [0, 1], the grader that gave it, and why (a judge's rationale, a check's finding)."""

    quality: float
    grader: str
    version: str
    detail: str = ""
    cost_usd: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.quality, bool) or not isinstance(self.quality, int | float) or math.isnan(self.quality):
            raise GradeFailed(f"{self.grader}: quality must be a number in [0, 1], got {self.quality!r}")
        if not 0.0 <= self.quality <= 1.0:
            raise GradeFailed(f"{self.grader}: quality must lie in [0, 1], got {self.quality!r}")


class Grader(Protocol):
    """Grades one answer; raises :class:`GradeFailed` when it cannot."""

    @property
    def name(self) -> str:
        """The grader's kind (``judge``, ``exact``, ...), logged with each grade."""
        ...

    @property
    def version(self) -> str:
        """Changes whenever the grader could grade the same answer differently (a judge's model and prompt)."""
        ...

    def grade(self, request: GradeRequest) -> Grade:
        """The answer's quality, or :class:`GradeFailed`."""
        ...


GraderKind = Literal["judge", "check"]
"""What kind of grader graded: an LLM judge, or a check of the answer (stored as a grade's ``source``)."""


def label(grader: Grader) -> str:
    """``name:version``, stored with each grade the grader gives."""
    return f"{grader.name}:{grader.version}"


def kind_of(grader: Grader) -> GraderKind:
    """``judge`` for a model's verdict, ``check`` for a reference or form check."""
    return "judge" if grader.name == LLMJudge.name else "check"


def _reference(request: GradeRequest, grader: str) -> str:
    if request.reference is None:
        raise GradeFailed(f"{grader}: the request has no reference answer (router_reference)")
    return request.reference


def normalise(text: str) -> str:
    """Casefolded, Unicode-normalised, punctuation and surrounding whitespace dropped, inner runs of space one."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


@dataclass(frozen=True)
class ExactMatch:
    """1 if the answer equals the reference after :func:`normalise`, else 0."""

    name: ClassVar[str] = "exact"
    version: ClassVar[str] = "1"

    def grade(self, request: GradeRequest) -> Grade:
        same = normalise(request.answer) == normalise(_reference(request, self.name))
        return Grade(float(same), self.name, self.version, "match" if same else "no match")


@dataclass(frozen=True)
class RegexMatch:
    """1 if the reference, read as a regular expression, matches somewhere in the answer, else 0."""

    name: ClassVar[str] = "regex"
    version: ClassVar[str] = "1"

    def grade(self, request: GradeRequest) -> Grade:
        pattern = _reference(request, self.name)
        try:
            found = re.search(pattern, request.answer) is not None
        except re.error as exc:
            raise GradeFailed(f"{self.name}: the reference is not a regular expression: {exc}") from exc
        return Grade(float(found), self.name, self.version, "match" if found else "no match")


_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class NumericMatch:
    """1 if the last number in the answer is within ``rel_tol`` (relative) or ``abs_tol`` of the reference."""

    rel_tol: float = 1e-6
    abs_tol: float = 0.0
    name: ClassVar[str] = "numeric"
    version: ClassVar[str] = "1"

    def __post_init__(self) -> None:
        if not (self.rel_tol >= 0 and self.abs_tol >= 0):
            raise InvalidInput("numeric grader: 'rel_tol' and 'abs_tol' must be >= 0")

    def grade(self, request: GradeRequest) -> Grade:
        reference = _reference(request, self.name)
        try:
            want = float(reference.replace(",", ""))
        except ValueError as exc:
            raise GradeFailed(f"{self.name}: the reference {reference!r} is not a number") from exc
        numbers = _NUMBER.findall(request.answer.replace(",", ""))
        if not numbers:
            return Grade(0.0, self.name, self.version, "no number in the answer")
        got = float(numbers[-1])
        close = math.isclose(got, want, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return Grade(float(close), self.name, self.version, f"answer {got:g}, reference {want:g}")


class _Invalid(Exception):
    """The answer is not what a form check asks for (a 0, not a failure)."""


def _json(answer: str) -> Any:
    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    try:
        return json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


@dataclass(frozen=True)
class JsonValid:
    """1 if the answer is JSON (optionally inside one fenced code block), else 0."""

    name: ClassVar[str] = "json"
    version: ClassVar[str] = "1"

    def grade(self, request: GradeRequest) -> Grade:
        try:
            _json(request.answer)
        except _Invalid as exc:
            return Grade(0.0, self.name, self.version, str(exc))
        return Grade(1.0, self.name, self.version, "valid JSON")


@dataclass(frozen=True)
class JsonSchemaValid:
    """1 if the answer is JSON valid against ``schema`` (a JSON Schema), else 0."""

    schema: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "json-schema"
    version: ClassVar[str] = "1"

    def __post_init__(self) -> None:
        import jsonschema

        try:
            jsonschema.validators.validator_for(self.schema).check_schema(self.schema)
        except jsonschema.SchemaError as exc:
            raise InvalidInput(f"json-schema grader: 'schema' is not a JSON Schema: {exc.message}") from exc

    def grade(self, request: GradeRequest) -> Grade:
        import jsonschema

        try:
            value = _json(request.answer)
        except _Invalid as exc:
            return Grade(0.0, self.name, self.version, str(exc))
        validator = jsonschema.validators.validator_for(self.schema)(self.schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            return Grade(0.0, self.name, self.version, f"schema: {error.message}")
        return Grade(1.0, self.name, self.version, "valid against the schema")


@dataclass(frozen=True)
class Attempt:
    """One try at grading: the grade, or why there is none (``reason``), what the try cost, and whether another try
    may succeed (a :class:`GradeFailed`: a judge that was down, slow, rate-limited for ``retry_after`` seconds, or
    answered garbage) or never will (a grader that raised anything else, or gave something that is not a quality)."""

    grade: Grade | None
    reason: str = ""
    cost_usd: float = 0.0
    retryable: bool = False
    retry_after: float | None = None


def attempt(grader: Grader, request: GradeRequest) -> Attempt:
    """Try ``grader`` once on ``request``; never raises."""
    try:
        grade = grader.grade(request)
    except GradeFailed as exc:
        return Attempt(None, str(exc), _usd(exc.cost_usd), retryable=True, retry_after=exc.retry_after)
    except Exception as exc:  # a grader's bug: trying again would fail the same way
        return Attempt(None, f"{grader.name}: the grader raised {type(exc).__name__}: {exc}")
    if not isinstance(grade, Grade):
        return Attempt(None, f"{grader.name}: the grader returned {type(grade).__name__}, not a Grade")
    quality = grade.quality  # a Grade checks its quality; a grader may still have bypassed the check
    if isinstance(quality, bool) or not isinstance(quality, int | float) or not 0.0 <= quality <= 1.0:
        reason = f"{grader.name}: quality must be a number in [0, 1], got {quality!r}"
        return Attempt(None, reason, _usd(grade.cost_usd))
    return Attempt(grade, cost_usd=_usd(grade.cost_usd))


def _usd(value: object) -> float:
    """A cost as reported, or 0 if it is not a finite amount >= 0."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value >= 0 else 0.0


MAX_BACKOFF_SECONDS = 60.0
"""The longest wait between two attempts, whatever the backoff or a ``Retry-After`` asks."""


@dataclass(frozen=True)
class Retry:
    """How often a grade job is tried, and how long to wait between attempts."""

    max_attempts: int = 1
    backoff_seconds: float = 2.0
    max_backoff_seconds: float = MAX_BACKOFF_SECONDS

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (from 1): the backoff doubled ``attempt - 1`` times, or
        ``retry_after`` if longer, capped at ``max_backoff_seconds``."""
        wait_for = self.backoff_seconds * 2.0 ** (attempt - 1)
        if retry_after is not None:
            wait_for = max(wait_for, retry_after)
        return min(wait_for, self.max_backoff_seconds)

    def again(self, attempts: int, tried: Attempt) -> bool:
        """Is the job tried again after ``attempts`` attempts, the last one ``tried``?"""
        return tried.grade is None and tried.retryable and attempts < self.max_attempts


RUBRIC = """You are grading an AI assistant's answer to a user's request. Judge how well the answer serves the
request: correctness first, then completeness, clarity and concision. Score on an absolute scale from 1 (useless or
wrong) to 10 (fully correct and as good as an expert's answer).{reference_note}

[Request]
{prompt}

[Answer]
{answer}

Reply with JSON only, exactly: {{"score": <integer 1-10>, "rationale": "<one or two sentences>"}}"""
"""The default judge prompt; ``{prompt}``, ``{answer}`` and ``{reference_note}`` are filled in."""

REFERENCE_NOTE = "\nA reference answer, known to be correct, is given below the answer; use it to check correctness."

Complete = Callable[[str], tuple[str, float]]
"""Sends one user message to the judge model at temperature 0; returns its reply and the call's cost in USD."""

_VERDICT = re.compile(r"\{.*\}", re.S)


@dataclass(frozen=True)
class LLMJudge:
    """An LLM as judge: the rubric (``template``) filled with the request and answer, sent through ``complete``; the
    reply must hold one JSON object ``{"score": 1-10, "rationale": ...}``. Quality is ``(score - 1) / 9``."""

    complete: Complete
    model: str
    template: str = RUBRIC
    name: ClassVar[str] = "judge"

    def __post_init__(self) -> None:
        for slot in ("{prompt}", "{answer}"):
            if slot not in self.template:
                raise InvalidInput(f"judge: 'template' must contain {slot}")

    @property
    def version(self) -> str:
        """The judge model and a digest of its prompt: a changed rubric is a different grader."""
        import hashlib

        return f"{self.model}:{hashlib.sha256(self.template.encode()).hexdigest()[:8]}"

    def prompt_for(self, request: GradeRequest) -> str:
        """The message sent to the judge."""
        note = REFERENCE_NOTE if request.reference is not None else ""
        text = self.template.replace("{reference_note}", note).replace("{prompt}", request.prompt)
        text = text.replace("{answer}", request.answer)
        if request.reference is not None:
            text += f"\n\n[Reference answer]\n{request.reference}"
        return text

    def grade(self, request: GradeRequest) -> Grade:
        reply, cost = self.complete(self.prompt_for(request))
        try:
            score, rationale = parse_verdict(reply)
        except GradeFailed as exc:  # the call was paid for all the same
            raise GradeFailed(str(exc), cost_usd=cost) from exc
        return Grade((score - 1) / 9, self.name, self.version, rationale, cost_usd=cost)


def parse_verdict(reply: str) -> tuple[int, str]:
    """``(score, rationale)`` from a judge's reply, strictly: one JSON object with an integer ``score`` in 1-10 and a
    string ``rationale``; anything else raises :class:`GradeFailed` quoting the start of the reply."""
    found = _VERDICT.search(reply)
    head = reply.strip()[:120]
    if found is None:
        raise GradeFailed(f"judge: no JSON verdict in the reply {head!r}")
    try:
        verdict = json.loads(found.group(0))
    except json.JSONDecodeError as exc:
        raise GradeFailed(f"judge: unparseable verdict ({exc.msg}) in {head!r}") from exc
    score = verdict.get("score") if isinstance(verdict, dict) else None
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 10:
        raise GradeFailed(f"judge: 'score' must be an integer from 1 to 10, got {score!r}")
    rationale = verdict.get("rationale", "")
    if not isinstance(rationale, str):
        raise GradeFailed("judge: 'rationale' must be a string")
    return score, rationale


def thumbs(up: bool) -> float:
    """A thumbs up is 1, a thumbs down 0."""
    return 1.0 if up else 0.0


def rating(stars: int, *, scale: int = 5) -> float:
    """A rating from 1 to ``scale`` mapped linearly onto [0, 1]: ``(stars - 1) / (scale - 1)``."""
    if isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= scale:
        raise InvalidInput(f"feedback: 'rating' must be an integer from 1 to {scale}, got {stars!r}")
    return (stars - 1) / (scale - 1)


@dataclass(frozen=True)
class Agreement:
    """How far a grader's qualities can be trusted against known ones (a benchmark's): ``agreement`` is the share of
    answers both call good or both call bad (at ``threshold``), ``correlation`` Pearson's r, ``bias`` the mean of
    *graded minus known*, overall and per model, over the ``n`` answers graded (``failed`` more could not be)."""

    n: int
    failed: int
    threshold: float
    agreement: float
    correlation: float
    bias: float
    bias_by_model: dict[str, float]

    def to_json(self) -> str:
        """The figures as JSON."""
        return json.dumps(
            {
                "n": self.n,
                "failed": self.failed,
                "threshold": self.threshold,
                "agreement": self.agreement,
                "correlation": self.correlation,
                "bias": self.bias,
                "bias_by_model": self.bias_by_model,
            },
            indent=2,
        )


def agreement(
    known: list[float], graded: list[float | None], models: list[str], *, threshold: float = 0.5
) -> Agreement:
    """Compare ``graded`` (None where grading failed) with ``known`` qualities of the same answers, by model."""
    if not len(known) == len(graded) == len(models):
        raise InvalidInput("agreement: 'known', 'graded' and 'models' must have the same length")
    pairs = [(k, g, m) for k, g, m in zip(known, graded, models) if g is not None]
    if len(pairs) < 2:
        raise InvalidInput(f"agreement: need at least 2 graded answers, got {len(pairs)}")
    import numpy as np

    k = np.array([p[0] for p in pairs], dtype=float)
    g = np.array([p[1] for p in pairs], dtype=float)
    same = float(np.mean((k >= threshold) == (g >= threshold)))
    spread = float(np.std(k) * np.std(g))
    correlation = float(np.mean((k - k.mean()) * (g - g.mean())) / spread) if spread > 0 else float("nan")
    by_model: dict[str, list[float]] = {}
    for known_q, graded_q, model in pairs:
        by_model.setdefault(model, []).append(graded_q - known_q)
    return Agreement(
        n=len(pairs),
        failed=len(known) - len(pairs),
        threshold=threshold,
        agreement=same,
        correlation=correlation,
        bias=float(np.mean(g - k)),
        bias_by_model={m: float(np.mean(d)) for m, d in sorted(by_model.items())},
    )
