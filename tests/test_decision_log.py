"""The decision log on SQLite and on a real PostgreSQL server: commits, joins, refusals, export to the logged-traffic
contract, schema versions, and (PostgreSQL) several replicas on one log."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from router_ml import decision_log as dlog
from router_ml.contracts import load_logs
from router_ml.decision_log import DecisionLog, DecisionRecord, DuplicateFeedback, UnknownDecision, new_decision_id
from router_ml.log_store import SCHEMA_VERSION, LogUnavailable
from tests.pgkit import PASSWORD, PostgresServer

_DATABASES = iter(range(1, 10_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh log location on each engine: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "d.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"log{next(_DATABASES)}")


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


def test_feedback_joins_once_and_export_is_training_data(location: str, tmp_path: Path) -> None:
    log = DecisionLog(location)
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
    again = DecisionLog(location)
    assert again.log_id == log.log_id and again.counts()["feedback"] == 2
    again.close()


def test_bad_durability_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        DecisionLog(tmp_path / "d.sqlite", durability="sometimes")  # type: ignore[arg-type]


def test_forwarded_calls_client_costs_tenants_and_interruptions(location: str) -> None:
    log = DecisionLog(location)
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
    with pytest.raises(LogUnavailable, match="database is locked"):
        log.record_decision(record())
    assert log.fault == "database is locked" and log.probe() == "database is locked"
    holder.execute("ROLLBACK")
    assert log.probe() is None and log.fault is None
    holder.close()
    log.close()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LogUnavailable, match="decision log"):  # its folder cannot be made
        DecisionLog(tmp_path / "a-file" / "d.sqlite")


def test_the_schema_is_versioned_and_old_logs_are_migrated(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "old.sqlite")  # a log written before decisions had an outcome (version 1)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE decisions (seq INTEGER PRIMARY KEY AUTOINCREMENT, decision_id TEXT NOT NULL UNIQUE,"
        " created_at REAL NOT NULL, tenant TEXT, prompt TEXT NOT NULL, model TEXT NOT NULL, propensity REAL NOT NULL,"
        " candidates TEXT NOT NULL, distribution TEXT NOT NULL, lam REAL NOT NULL, policy_version TEXT NOT NULL,"
        " est_cost_usd REAL NOT NULL, answered_by TEXT, cost_usd REAL, input_tokens INTEGER, output_tokens INTEGER);"
        "INSERT INTO meta VALUES ('log_id', 'old-log');"
    )
    old.close()
    log = DecisionLog(tmp_path / "old.sqlite")
    assert log.log_id == "old-log"
    log.record_decision(replace(record(), forwarded=True))
    assert log.interrupted() == 1, "the migration added the outcome column"
    log.close()
    meta = sqlite3.connect(tmp_path / "old.sqlite")
    assert meta.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    meta.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    meta.commit()
    meta.close()
    with pytest.raises(LogUnavailable, match="schema version 99"):
        DecisionLog(tmp_path / "old.sqlite")


def test_a_version_2_log_gains_who_graded_and_the_grade_jobs(tmp_path: Path) -> None:
    """A log written before grading (version 2: feedback without source and grader, no grade_jobs) is migrated in
    place: its grades stay, with no source; new grades and jobs are written."""
    path = tmp_path / "v2.sqlite"
    log = DecisionLog(path)
    old = record()
    log.record_decision(old)
    log.record_feedback(old.decision_id, 0.5)
    log.close()
    v2 = sqlite3.connect(path)
    v2.executescript(
        "ALTER TABLE feedback DROP COLUMN source; ALTER TABLE feedback DROP COLUMN grader; DROP TABLE grade_jobs;"
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
    )
    v2.close()
    log = DecisionLog(path)
    new = replace(record(), forwarded=True)
    log.record_decision(new)
    log.record_usage(new.decision_id, "a", 0.001, 10, 5, job=dlog.NewGradeJob("exact:1", "the answer", "the answer"))
    (job,) = log.claim_jobs(time.time(), 30.0, 10)
    assert (job.decision_id, job.answer, job.reference) == (new.decision_id, "the answer", "the answer")
    log.record_feedback(new.decision_id, 1.0, source="check", grader="exact:1")
    frame = log.to_frame()
    log.close()
    who = dict(zip(frame["event_id"], zip(frame["grade_source"], frame["grader"], strict=True), strict=True))
    assert who == {old.decision_id: (None, None), new.decision_id: ("check", "exact:1")}
    assert sqlite3.connect(path).execute("SELECT state, answer FROM grade_jobs").fetchall() == [("done", None)]


def test_replicas_share_one_postgresql_log_and_a_grade_is_taken_once(postgres_server: PostgresServer) -> None:
    """Two logs on one database (two replicas): the same id, and of 16 concurrent grades of one decision spread over
    both, exactly one is accepted. Meanwhile a reader that advances past every sequence number it sees misses none:
    feedback is numbered in commit order."""
    from concurrent.futures import ThreadPoolExecutor

    url = postgres_server.create_database("replicas")
    first, second = DecisionLog(url), DecisionLog(url)
    assert first.log_id == second.log_id
    decisions = [record() for _ in range(120)]
    for d in decisions:
        first.record_decision(d)
    target = decisions[0].decision_id

    def grade(i: int) -> bool:
        try:
            (first if i % 2 else second).record_feedback(target, 1.0)
            return True
        except DuplicateFeedback:
            return False

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(grade, range(16))) == 1
    seen: set[int] = set()
    done = False

    def read() -> None:
        high = 0
        while True:
            finished = done
            for g in first.graded_since(high):
                seen.add(g.seq)
                high = max(high, g.seq)
            if finished:
                return

    with ThreadPoolExecutor(9) as pool:
        reader = pool.submit(read)
        list(
            pool.map(
                lambda d: (second if hash(d.decision_id) % 2 else first).record_feedback(d.decision_id, 0.5),
                decisions[1:],
            )
        )
        done = True
        reader.result()
    assert seen == {g.seq for g in first.graded_since(0)} and len(seen) == len(decisions)
    first.close()
    second.close()


def test_an_unreachable_database_names_its_url_without_the_password(postgres_server: PostgresServer) -> None:
    url = f"postgresql://router:{PASSWORD}@127.0.0.1:1/router"
    with pytest.raises(LogUnavailable) as caught:
        DecisionLog(url, busy_timeout=1.0)
    assert "127.0.0.1:1/router" in str(caught.value) and PASSWORD not in str(caught.value)


def test_a_database_that_goes_away_is_log_unavailable_and_the_log_recovers(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("flaky")
    log = DecisionLog(url, busy_timeout=1.0)
    log.record_decision(record())
    postgres_server.stop("immediate")
    try:
        with pytest.raises(LogUnavailable) as caught:
            log.record_decision(record())
        assert PASSWORD not in str(caught.value) and log.fault is not None
    finally:
        postgres_server.restart()
    deadline = time.monotonic() + 30
    while log.probe() is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert log.fault is None
    log.record_decision(record())
    assert log.counts()["decisions"] == 2
    log.close()
