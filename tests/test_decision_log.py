"""The SQLite decision log: commits, joins, refusals, export to the logged-traffic contract."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from router_ml import decision_log as dlog
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


def test_forwarded_calls_client_costs_tenants_and_interruptions(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.sqlite")
    routed, forwarded, cut = record(), replace(record(), forwarded=True), replace(record(), forwarded=True)
    for d in (routed, forwarded, cut):
        log.record_decision(d)

    def bound(model: str, prompt: str) -> float:
        return 0.01

    with pytest.raises(UnknownDecision):  # another tenant's decision is unknown to it
        log.record_feedback(routed.decision_id, 1.0, tenant="t2")
    with pytest.raises(dlog.ClientCostRefused, match="cost_usd"):
        log.record_feedback(routed.decision_id, 1.0, 0.02, tenant="t1", cost_bound=bound)
    with pytest.raises(dlog.AnswerInFlight):
        log.record_feedback(forwarded.decision_id, 1.0, tenant="t1")
    log.record_usage(forwarded.decision_id, "a", 0.003, 10, 20)
    with pytest.raises(dlog.ClientCostRefused, match="metered"):
        log.record_feedback(forwarded.decision_id, 1.0, 0.0, tenant="t1")
    assert log.counts()["feedback"] == 0, "a refusal writes nothing"
    assert log.record_feedback(routed.decision_id, 1.0, 0.004, tenant="t1", cost_bound=bound).cost_usd == 0.004
    assert log.record_feedback(forwarded.decision_id, 0.5, tenant="t1").cost_usd == 0.003
    assert log.spend("source") == pytest.approx({"client": 0.004, "estimate": 0.001, "metered": 0.003})
    assert log.spend("model", tenant="t2") == {}
    # the service stopped while the third call was being answered: no model answered it, so it is not learned
    assert log.interrupted() == 1
    assert not log.record_feedback(cut.decision_id, 1.0, tenant="t1").learnable
    log.close()


def test_a_disk_fault_is_log_unavailable_with_sqlite_reason_until_a_write_succeeds(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.sqlite", busy_timeout=0.1)
    holder = sqlite3.connect(tmp_path / "d.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(dlog.LogUnavailable, match="database is locked"):
        log.record_decision(record())
    assert log.fault == "database is locked" and log.probe() == "database is locked"
    holder.execute("ROLLBACK")
    assert log.probe() is None and log.fault is None
    holder.close()
    log.close()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(dlog.LogUnavailable, match="decision log"):  # its folder cannot be made
        DecisionLog(tmp_path / "a-file" / "d.sqlite")
