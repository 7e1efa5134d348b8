"""The SQLite decision log: commits, joins, refusals, export to the logged-traffic contract."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from router_ml.contracts import load_logs
from router_ml.decision_log import DecisionLog, DecisionRecord, DuplicateFeedback, UnknownDecision, new_decision_id


def record(model: str = "a", tenant: str | None = "t1") -> DecisionRecord:
    return DecisionRecord(
        decision_id=new_decision_id(),
        created_at=time.time(),
        tenant=tenant,
        prompt="What is 2 + 2?",
        model=model,
        propensity=0.7,
        candidates=("a", "b"),
        distribution={"a": 0.7, "b": 0.3},
        lam=0.05,
        policy_version="1+3",
        est_cost_usd=0.001,
    )


def test_feedback_joins_once_and_export_is_training_data(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.sqlite")
    first, second, third = record(), record("b", None), record()
    for d in (first, second, third):
        log.record_decision(d)
    log.record_usage(second.decision_id, "a", 0.002, 10, 20)  # a fallback answered the second one
    graded = log.record_feedback(first.decision_id, 1.0, 0.004)
    assert (graded.model, graded.propensity, graded.cost_usd, graded.learnable) == ("a", 0.7, 0.004, True)
    assert not log.record_feedback(second.decision_id, 0.0).learnable
    with pytest.raises(DuplicateFeedback):
        log.record_feedback(first.decision_id, 0.0)
    with pytest.raises(UnknownDecision):
        log.record_feedback("missing", 1.0)
    assert log.counts() == {"decisions": 3, "feedback": 2}
    assert [g.decision_id for g in log.graded_since(0)] == [first.decision_id, second.decision_id]
    assert log.spend("tenant") == pytest.approx({"t1": 0.005, "": 0.002})
    assert log.mark("base:1") == 2 and log.mark("base:1") == 2

    out = log.export(tmp_path / "logs.parquet")
    logs = load_logs(tmp_path / "logs.parquet")
    assert logs.height == out.height == 2, "the fallback-answered decision is not the sampled model's outcome"
    assert logs["quality"].to_list() == [1.0, None]
    assert logs["cost_usd"].to_list() == [0.004, 0.001]
    assert log.export(tmp_path / "all.parquet", include_fallback=True).height == 3
    log.close()

    # the id and the rows survive reopening
    again = DecisionLog(tmp_path / "d.sqlite")
    assert again.log_id == log.log_id and again.counts()["feedback"] == 2
    again.close()


def test_bad_durability_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        DecisionLog(tmp_path / "d.sqlite", durability="sometimes")  # type: ignore[arg-type]
