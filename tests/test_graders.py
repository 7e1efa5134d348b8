"""The graders: reference checks, the strict LLM judge, user signals; every failure is a GradeFailed with a reason."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from router_ml.errors import InvalidInput
from router_ml.graders import (
    ExactMatch,
    Grade,
    GradeFailed,
    GradeRequest,
    JsonSchemaValid,
    JsonValid,
    LLMJudge,
    NumericMatch,
    RegexMatch,
    agreement,
    normalise,
    parse_verdict,
    rating,
    thumbs,
)


def req(answer: str, reference: str | None = None) -> GradeRequest:
    return GradeRequest(prompt="What is the capital of France?", answer=answer, reference=reference)


@pytest.mark.parametrize(
    ("answer", "reference", "quality"),
    [("  Paris. ", "paris", 1.0), ("PARIS!", "Paris", 1.0), ("Lyon", "Paris", 0.0), ("Ｐａｒｉｓ", "paris", 1.0)],
)
def test_exact_match_after_normalisation(answer: str, reference: str, quality: float) -> None:
    assert ExactMatch().grade(req(answer, reference)).quality == quality


def test_normalise_drops_case_punctuation_and_extra_space() -> None:
    assert normalise("  The  Answer:\tB. ") == "the answer b"


def test_regex_and_numeric_checks() -> None:
    assert RegexMatch().grade(req("The answer is (C).", r"\(C\)")).quality == 1.0
    assert RegexMatch().grade(req("The answer is (D).", r"\(C\)")).quality == 0.0
    assert NumericMatch(rel_tol=1e-3).grade(req("so x = 3.1416", "3.14159")).quality == 1.0
    assert NumericMatch().grade(req("it costs 1,250 dollars", "1250")).quality == 1.0
    assert NumericMatch(abs_tol=0.1).grade(req("first 2, then 7.25", "7.2")).quality == 1.0  # the last number counts
    assert NumericMatch().grade(req("about 41", "42")).quality == 0.0
    assert NumericMatch().grade(req("no idea", "42")).quality == 0.0


def test_a_check_without_its_reference_or_with_a_broken_one_fails_with_the_reason() -> None:
    for grader in (ExactMatch(), RegexMatch(), NumericMatch()):
        with pytest.raises(GradeFailed, match="no reference answer"):
            grader.grade(req("Paris"))
    with pytest.raises(GradeFailed, match="not a regular expression"):
        RegexMatch().grade(req("x", "(unclosed"))
    with pytest.raises(GradeFailed, match="not a number"):
        NumericMatch().grade(req("3", "three"))
    with pytest.raises(InvalidInput, match="rel_tol"):
        NumericMatch(rel_tol=-1)


def test_json_and_json_schema_checks() -> None:
    assert JsonValid().grade(req('{"a": 1}')).quality == 1.0
    assert JsonValid().grade(req('```json\n{"a": 1}\n```')).quality == 1.0
    bad = JsonValid().grade(req("{'a': 1}"))
    assert bad.quality == 0.0 and "not JSON" in bad.detail
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert JsonSchemaValid(schema).grade(req('{"city": "Paris"}')).quality == 1.0
    wrong = JsonSchemaValid(schema).grade(req('{"town": "Paris"}'))
    assert wrong.quality == 0.0 and "city" in wrong.detail
    with pytest.raises(InvalidInput, match="schema"):
        JsonSchemaValid({"type": "no-such-type"})


def test_the_judge_parses_strictly_and_scores_on_the_documented_scale() -> None:
    sent: list[str] = []

    def complete(message: str) -> tuple[str, float]:
        sent.append(message)
        return 'Sure. {"score": 7, "rationale": "Right, but terse."}', 0.0004

    judge = LLMJudge(complete, model="gpt-4o-mini")
    grade = judge.grade(req("Paris", reference="Paris"))
    assert grade == Grade(6 / 9, "judge", judge.version, "Right, but terse.", cost_usd=0.0004)
    assert "[Answer]\nParis" in sent[0] and "[Reference answer]\nParis" in sent[0]
    assert judge.version.startswith("gpt-4o-mini:")
    assert LLMJudge(complete, "gpt-4o-mini", template="{prompt} {answer}").version != judge.version


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I think it is good.", "no JSON verdict"),
        ('{"score": 7, "rationale": }', "unparseable verdict"),
        ('{"score": 11, "rationale": "x"}', "integer from 1 to 10"),
        ('{"score": 7.5, "rationale": "x"}', "integer from 1 to 10"),
        ('{"score": true, "rationale": "x"}', "integer from 1 to 10"),
        ('{"rationale": "x"}', "integer from 1 to 10"),
        ('{"score": 3, "rationale": 5}', "rationale"),
    ],
)
def test_an_unparseable_verdict_is_a_failure_never_a_guess(reply: str, reason: str) -> None:
    with pytest.raises(GradeFailed, match=reason):
        parse_verdict(reply)


def test_a_judge_template_must_hold_the_request_and_the_answer() -> None:
    with pytest.raises(InvalidInput, match="answer"):
        LLMJudge(lambda m: ("", 0.0), "m", template="{prompt} only")


@pytest.mark.parametrize("quality", [-0.1, 1.5, math.nan, "0.5", True])
def test_a_grade_outside_zero_one_or_not_a_number_fails(quality: object) -> None:
    with pytest.raises(GradeFailed, match="quality"):
        Grade(quality, "g", "1")  # type: ignore[arg-type]


def test_user_signals_map_onto_zero_one() -> None:
    assert (thumbs(True), thumbs(False)) == (1.0, 0.0)
    assert [rating(s) for s in range(1, 6)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in (0, 6, 2.5, True):
        with pytest.raises(InvalidInput, match="rating"):
            rating(bad)  # type: ignore[arg-type]


def test_agreement_recovers_a_fake_judges_known_error_rate_and_bias(small_benchmark: Path) -> None:
    """A judge that flips the benchmark's 0/1 grade with probability 0.2, on real MMLU-Pro rows: agreement is 0.8
    within a binomial 99.9% interval; a judge that always adds 0.25 (clipped) shows that bias per model."""
    frame = pl.read_parquet(small_benchmark)
    known = frame["quality"].to_list()
    models = frame["model"].to_list()
    rng = np.random.default_rng(0)
    error = 0.2

    def fake_judge(truth: float) -> float | None:
        if rng.random() < 0.01:
            return None  # an unparseable verdict: a failure, not counted
        return 1.0 - truth if rng.random() < error else truth

    graded = [fake_judge(q) for q in known]
    found = agreement(known, graded, models)
    half_width = 3.3 * math.sqrt(error * (1 - error) / found.n)
    assert abs(found.agreement - (1 - error)) < half_width
    assert found.failed == sum(g is None for g in graded) and found.n + found.failed == len(known)
    # flipping moves a 0 up and a 1 down: the expected bias is error * (1 - 2 * mean known quality)
    expected_bias = error * (1 - 2 * float(np.mean(known)))
    assert abs(found.bias - expected_bias) < 3.3 * math.sqrt(error / found.n)
    assert 0.4 < found.correlation < 0.8
    lenient = agreement(known, [min(1.0, q + 0.25) for q in known], models)
    wrong_models = {m for m, q in zip(models, known) if q < 1.0}
    assert all(lenient.bias_by_model[m] > 0 for m in wrong_models)
    assert json.loads(lenient.to_json())["n"] == len(known)
    with pytest.raises(InvalidInput, match="same length"):
        agreement(known, graded[:-1], models)
