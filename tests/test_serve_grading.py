"""Background grading in the service: a real service (in this process, or `router-ml serve` for kill -9 and the main
flow), a fake upstream that answers and judges with a known error rate (tests/judgekit.py), the real decision log.

The sampling rate holds within a binomial interval; grades take the client's path (exactly once, source and grader
stored, learned); the spend cap holds; the first grade wins; a judge that is down, rate-limited or answers garbage and
a check that cannot grade end their jobs failed with the reason and teach the model nothing; jobs pending at a kill -9
are each graded once after the restart; and with the judge on, the online policy learns where without it it does not.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

from router_ml import mlflow_schema, settings
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.cli import main
from router_ml.contracts import load_benchmark
from router_ml.day_one_stream import replay
from router_ml.decision_log import DecisionLog
from router_ml.embed import CachedEmbedder
from router_ml.fullinfo import FullInfo
from router_ml.registry import PolicyRegistry
from tests.judgekit import FakeJudgeUpstream, answer_text, prompt_key
from tests.servekit import (
    ADMIN_KEY,
    MODELS,
    InProcessServer,
    Server,
    ServerProcess,
    champion,
    client,
    sqlite_store,
    wait_until,
    write_config,
)

JUDGE = "gpt-4o"
PROMPTS = [f"Question {i}: what is {i} times {i + 3}?" for i in range(60)]


def _grader(kind: str = "judge", **fields: object) -> str:
    lines = ["[grader]", f'kind = "{kind}"', *(f"{k} = {v!r}".replace("'", '"') for k, v in fields.items())]
    if kind == "judge":
        lines.append(f'judge_model = "{JUDGE}"')
    return "\n".join(lines) + "\n"


def _config(home: Path, judge: FakeJudgeUpstream, grader: str, extra: str = "") -> Path:
    return write_config(
        home / "serve.toml", home=home, upstream=judge.url, models=dict.fromkeys(MODELS, "ok"), extra=grader + extra
    )


def _chat(c: httpx.Client, prompt: str, **extension: object) -> str:
    r = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": prompt}],
                                             **extension})
    assert r.status_code == 200, r.text
    return r.headers["x-router-decision-id"]


def _rows(server: Server, sql: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(f"file:{server.log}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql, args))


def _jobs(server: Server) -> dict[str, sqlite3.Row]:
    return {r["decision_id"]: r for r in _rows(server, "SELECT * FROM grade_jobs")}


def _settled(server: Server) -> bool:
    return not any(r["state"] == "pending" for r in _jobs(server).values())


def _judged_cost(calls: int) -> float:
    spec = Catalog.load(settings.default_catalog()).spec(JUDGE)
    return calls * spec.cost_usd(100, 20)  # the fake judge's usage per call


@pytest.fixture
def judge() -> Iterator[FakeJudgeUpstream]:
    with FakeJudgeUpstream() as fake:
        for i, prompt in enumerate(PROMPTS):  # the judge knows the truth: gpt-4o is right, the others half the time
            for model in MODELS:
                fake.truth[(prompt_key(prompt), model)] = 1.0 if model == JUDGE or i % 2 else 0.0
        yield fake


@contextlib.contextmanager
def _serving(home: Path, artifact: PolicyArtifact, judge: FakeJudgeUpstream, grader: str, extra: str = "",
             *, process: bool = False) -> Iterator[Server]:
    uri, _ = champion(home, artifact)
    config = _config(home, judge, grader, extra)
    server: InProcessServer | ServerProcess = (
        ServerProcess(config, home, uri) if process else InProcessServer(config, home, uri)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_sample_of_answers_is_judged_through_the_feedback_path(
    home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """`router-ml serve` judges a random 30% of its answers; each grade is committed once with its source and grader,
    learned, counted as grading spend apart from routed spend, and its answer text is gone once the job ends."""
    n, rate = 300, 0.3
    with _serving(home, policy_artifact, judge, _grader(sample_rate=rate, backoff_seconds=0.2), process=True) as s:
        with ThreadPoolExecutor(4) as pool:
            clients = [client(s) for _ in range(4)]
            ids = list(pool.map(lambda i: _chat(clients[i % 4], PROMPTS[i % len(PROMPTS)]), range(n)))
        wait_until(
            lambda: _settled(s) and len(_rows(s, "SELECT 1 FROM feedback")) == len(_jobs(s)), what="the grade jobs"
        )
        jobs = _jobs(s)
        assert set(jobs) <= set(ids)
        # the sampling rate holds within a binomial interval (4 standard deviations)
        assert abs(len(jobs) - rate * n) <= 4 * math.sqrt(n * rate * (1 - rate)), len(jobs)
        assert {r["state"] for r in jobs.values()} == {"done"}
        assert all(r["answer"] is None and r["reference"] is None for r in jobs.values()), "answers outlive their job"
        feedback = _rows(s, "SELECT f.*, d.model, d.prompt FROM feedback f JOIN decisions d USING (decision_id)")
        assert len(feedback) == len(jobs) == judge.judged
        for row in feedback:
            assert row["source"] == "judge" and row["grader"].startswith(f"judge:{JUDGE}:"), dict(row)
            prompt = row["prompt"].removeprefix("user: ")
            assert row["quality"] == judge.truth[(prompt_key(prompt), row["model"])]  # error rate 0: the truth
        wait_until(lambda: s.applied() == len(jobs), what="the learner")

        spend = s.get("/v1/spend", ADMIN_KEY).json()
        assert spend["grading"]["total_usd"] == pytest.approx(_judged_cost(judge.judged))
        routed = sum(r["cost_usd"] for r in _rows(s, "SELECT cost_usd FROM decisions"))
        assert sum(spend["by_model"].values()) == pytest.approx(routed), "judging is not routed spend"
        metrics = s.get("/metrics", ADMIN_KEY).text
        assert f'router_grade_jobs_total{{state="done"}} {float(len(jobs))}' in metrics
        assert "router_grading_spend_usd_total" in metrics
        assert answer_text(MODELS[0], PROMPTS[0]) not in metrics, "an answer reached /metrics"

    export = home / "graded.parquet"
    assert main(["export-logs", "--log", str(s.log), "-o", str(export)]) == 0
    graded = pl.read_parquet(export).filter(pl.col("quality").is_not_null())
    assert graded.height == len(jobs) and set(graded["grade_source"]) == {"judge"}


def test_the_spend_cap_holds(home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream) -> None:
    """Every answer is drawn, but judging may spend only $0.2 per 1,000 routed requests: some jobs are skipped with
    the reason, the rest judged, and the judging spend stays within the cap."""
    cap, n = 0.2, 200
    with _serving(home, policy_artifact, judge, _grader(sample_rate=1.0, spend_cap_usd_per_1k=cap)) as s:
        c = client(s)
        for i in range(n):
            _chat(c, PROMPTS[i % len(PROMPTS)])
        wait_until(lambda: _settled(s), what="the grade jobs")
        jobs = _jobs(s).values()
        states = [r["state"] for r in jobs]
        assert len(states) == n, "every answer was drawn"
        assert states.count("done") > 0 and states.count("skipped") > 0, states
        assert {r["reason"] for r in jobs if r["state"] == "skipped"} == {"the judging spend cap"}
        spent = s.get("/v1/spend", ADMIN_KEY).json()
        assert 0 < spent["grading"]["total_usd"] <= cap * n / 1000


def test_the_first_grade_wins(home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream) -> None:
    """A client's grade that comes first ends the pending job (the judge is not paid again); a client's grade after
    the judge's gets 409."""
    with _serving(home, policy_artifact, judge, _grader(sample_rate=1.0, backoff_seconds=30.0)) as s:
        c = client(s)
        judge.mode = "down"
        first = _chat(c, PROMPTS[0])
        wait_until(lambda: _jobs(s)[first]["attempts"] == 1, what="the first attempt")
        calls = judge.judged
        assert c.post("/v1/feedback", json={"decision_id": first, "thumbs": "up"}).status_code == 202
        job = _jobs(s)[first]
        assert job["state"] == "superseded" and job["answer"] is None
        (fb,) = _rows(s, "SELECT * FROM feedback WHERE decision_id = ?", (first,))
        assert (fb["source"], fb["grader"], fb["quality"]) == ("client", "client:thumbs", 1.0)

        judge.mode = "ok"
        second = _chat(c, PROMPTS[1])
        wait_until(lambda: _jobs(s)[second]["state"] == "done", what="the grade jobs")
        late = c.post("/v1/feedback", json={"decision_id": second, "rating": 2})
        assert late.status_code == 409 and "already has feedback" in late.json()["detail"]
        assert judge.judged == calls + 1, "the superseded job was not judged again"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("down", "HTTP 500"), ("garbage", "no JSON verdict"), ("ratelimit", "HTTP 429")],
)
def test_a_failing_judge_fails_its_jobs_and_teaches_nothing(
    mode: str, reason: str, home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """Each job is tried ``max_attempts`` times with backoff (a 429's Retry-After of 1 s is waited for), then fails
    with the judge's reason; no grade is stored, the model learns nothing, and routing carries on."""
    judge.mode = mode
    with _serving(home, policy_artifact, judge, _grader(sample_rate=1.0, max_attempts=2, backoff_seconds=0.1)) as s:
        c = client(s)
        ids = [_chat(c, PROMPTS[i]) for i in range(3)]
        wait_until(lambda: _settled(s) and len(_jobs(s)) == 3, what="the grade jobs")
        jobs = _jobs(s)
        for decision_id in ids:
            job = jobs[decision_id]
            assert job["state"] == "failed" and job["attempts"] == 2 and reason in job["reason"], dict(job)
            assert job["answer"] is None
            if mode == "ratelimit":
                assert job["ended_at"] - job["created_at"] >= 1.0, "the Retry-After was not waited for"
        assert judge.judged == 6
        assert _rows(s, "SELECT * FROM feedback") == []
        assert s.applied() == 0
        garbage_cost = _judged_cost(6) if mode == "garbage" else 0.0  # an unparseable verdict is still paid for
        spend = s.get("/v1/spend", ADMIN_KEY).json()
        assert spend["grading"]["total_usd"] == pytest.approx(garbage_cost)


def test_the_backlog_of_pending_jobs_is_bounded(
    home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """With the judge down and ``max_pending = 5``, five jobs wait with their answers; later draws are skipped with
    the reason and keep no answer."""
    judge.mode = "down"
    grader = _grader(sample_rate=1.0, max_pending=5, backoff_seconds=30.0)
    with _serving(home, policy_artifact, judge, grader) as s:
        c = client(s)
        for i in range(20):
            _chat(c, PROMPTS[i])
        jobs = list(_jobs(s).values())
    pending = [r for r in jobs if r["state"] == "pending"]
    skipped = [r for r in jobs if r["state"] == "skipped"]
    assert (len(pending), len(skipped)) == (5, 15)
    assert all(r["answer"] is not None for r in pending) and all(r["answer"] is None for r in skipped)
    assert {r["reason"] for r in skipped} == {"the grading backlog is full"}


def test_a_slow_judge_does_not_slow_routing(
    home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """With the judge taking 3 s a call and every answer sampled, chat completions still answer in well under that."""
    judge.mode, judge.slow_seconds = "slow", 3.0
    with _serving(home, policy_artifact, judge, _grader(sample_rate=1.0, timeout_seconds=10.0)) as s:
        c = client(s)
        took = []
        for i in range(20):
            start = time.perf_counter()
            _chat(c, PROMPTS[i])
            took.append(time.perf_counter() - start)
        assert judge.judged >= 1, "the judge was being called meanwhile"
        assert float(np.median(took)) < 0.5 and max(took) < 2.0, took


def test_reference_checks_grade_against_the_request_reference(
    home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """kind = "exact": an answer equal to ``router_reference`` (after normalisation) scores 1, another 0; a request
    without a reference fails its job with the reason; the reference is never forwarded."""
    with _serving(home, policy_artifact, judge, _grader("exact", sample_rate=1.0, max_attempts=1)) as s:
        c = client(s)
        only = {"router_candidates": [JUDGE]}
        right = _chat(c, PROMPTS[0], router_reference=answer_text(JUDGE, PROMPTS[0]).upper(), **only)
        wrong = _chat(c, PROMPTS[1], router_reference="something else", **only)
        missing = _chat(c, PROMPTS[2], **only)
        wait_until(lambda: _settled(s) and len(_jobs(s)) == 3, what="the grade jobs")
        quality = {r["decision_id"]: (r["quality"], r["source"]) for r in _rows(s, "SELECT * FROM feedback")}
        assert quality == {right: (1.0, "check"), wrong: (0.0, "check")}
        job = _jobs(s)[missing]
        assert job["state"] == "failed" and "no reference answer" in job["reason"]
        assert judge.judged == 0


@pytest.mark.slow
def test_kill_9_with_jobs_pending_grades_each_once_after_restart(
    home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """Jobs pending (the judge down) when `router-ml serve` is killed -9 are each judged and learned once after it
    restarts."""
    n = 40
    uri, _ = champion(home, policy_artifact)
    config = _config(home, judge, _grader(sample_rate=1.0, max_attempts=1000, backoff_seconds=0.3))
    judge.mode = "down"
    server = ServerProcess(config, home, uri).start()
    try:
        c = client(server)
        ids = [_chat(c, PROMPTS[i % len(PROMPTS)]) for i in range(n)]
        wait_until(lambda: len(_jobs(server)) == n and judge.judged >= n, what="the grade jobs")
        server.kill()
    finally:
        server.stop()
    assert {r["state"] for r in _jobs(server).values()} == {"pending"}
    judge.mode = "ok"
    restarted = ServerProcess(config, home, uri).start()
    try:
        wait_until(lambda: _settled(restarted), what="the grade jobs")
        wait_until(lambda: restarted.applied() == n, what="the learner")
    finally:
        restarted.stop()
    jobs = _jobs(restarted)
    assert set(jobs) == set(ids) and {r["state"] for r in jobs.values()} == {"done"}
    log = DecisionLog(restarted.log)
    try:
        frame = log.to_frame()
    finally:
        log.close()
    assert frame.filter(pl.col("quality").is_not_null()).height == n
    assert set(frame["grade_source"].drop_nulls()) == {"judge"}


def _learn_from_stream(
    home: Path, rate: float, stream: FullInfo, rows: npt.NDArray[np.int64], heldout: FullInfo,
    heldout_x: npt.NDArray[np.float32],
) -> tuple[int, list[float]]:
    """A day-one policy served with grading at ``rate`` (a judge wrong 10% of the time) over ``stream.prompts[rows]``;
    the number of grades, and the replayed held-out quality of the init version and of each online snapshot."""
    uri = sqlite_store(home)
    catalog = home / "catalog.toml"
    full = Catalog.load(settings.default_catalog())
    Catalog(tuple(full.spec(m) for m in MODELS)).save(catalog)
    assert main(["init", "--catalog", str(catalog), "--default", "llama-3.1-8b-instruct", "--explore-share", "0.5",
                 "--lam", "0.01", "--min-graded", "50", "--promote", "--tracking-uri", uri]) == 0
    with FakeJudgeUpstream(error_rate=0.1, seed=1) as judge:
        for j, prompt in enumerate(stream.prompts):
            for k, model in enumerate(MODELS):
                judge.truth[(prompt_key(prompt), model)] = float(stream.quality[j, k])
        extra = "[learning]\nsnapshot_every_updates = 100\nsnapshot_every_seconds = 3600\n"
        server = InProcessServer(_config(home, judge, _grader(sample_rate=rate, concurrency=4), extra), home, uri)
        server.start()
        try:
            clients = [client(server) for _ in range(4)]
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda i: _chat(clients[i % 4], stream.prompts[int(rows[i])]), range(len(rows))))
            wait_until(lambda: _settled(server), timeout=120, what="the grade jobs")
            graded = len(_rows(server, "SELECT 1 FROM feedback"))
            wait_until(lambda: server.applied() == graded, what="the learner")
        finally:
            server.stop()
    registry = PolicyRegistry(uri)
    versions = sorted(registry.versions(), key=lambda v: int(v.version))
    snapshots = [v for v in versions if v.tags.get(mlflow_schema.TAG_SOURCE) == mlflow_schema.SOURCE_ONLINE]
    curve = [replay(registry.load(v.version)[0].policy, heldout, heldout_x)[0] for v in [versions[0], *snapshots]]
    return graded, curve


@pytest.mark.slow
def test_with_a_judge_the_policy_learns_and_without_one_it_does_not(
    tmp_path: Path,
    learning_benchmark: Path,
    embedder: CachedEmbedder,
    embedding_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same fixed stream of MMLU-Pro prompts through two services started from one day-one policy: one grades
    every answer with a judge that is wrong 10% of the time, the other grades nothing. The judged service's last
    snapshot replays better on held-out prompts than the start; the other never changes."""
    bench = load_benchmark(learning_benchmark).filter(pl.col("model").is_in(MODELS))
    table = FullInfo.from_benchmark(bench, models=MODELS)
    stream, heldout = table.subset(np.arange(400)), table.subset(np.arange(400, len(table.prompts)))
    rows = np.random.default_rng(0).integers(0, 400, size=300)
    heldout_x = np.asarray(embedder.encode(heldout.prompts))
    gains = {}
    for name, rate in (("judged", 1.0), ("ungraded", 0.0)):
        home = tmp_path / name
        home.mkdir()
        (home / "embeddings.sqlite").symlink_to(embedding_cache_dir / "embeddings.sqlite")
        monkeypatch.setenv(settings.HOME_ENV, str(home))
        gains[name] = _learn_from_stream(home, rate, stream, rows, heldout, heldout_x)
    (judged_n, judged), (ungraded_n, ungraded) = gains["judged"], gains["ungraded"]
    assert judged_n == len(rows) and ungraded_n == 0
    assert len(ungraded) == 1, "with nothing graded, no snapshot was taken"
    assert judged[0] == pytest.approx(ungraded[0]), "both started from the same policy"
    assert judged[-1] > ungraded[-1] + 0.05, (judged, ungraded)


def test_client_grades_are_a_quality_a_thumb_or_a_rating_and_exactly_one(
    home: Path, policy_artifact: PolicyArtifact, judge: FakeJudgeUpstream
) -> None:
    """``/v1/feedback`` takes one of quality, thumbs or rating (1-5, mapped to (r - 1) / 4); the signal is stored as
    the grader; anything else is a 422 naming the field."""
    with _serving(home, policy_artifact, judge, _grader("exact", sample_rate=0.0)) as s:
        c = client(s)
        ids = [_chat(c, PROMPTS[i]) for i in range(3)]
        bad: list[dict[str, object]] = [{}, {"quality": 1.0, "thumbs": "up"}, {"rating": 6}, {"rating": 4.0},
                                        {"thumbs": "sideways"}]
        for body in bad:
            r = c.post("/v1/feedback", json={"decision_id": ids[0], **body})
            assert r.status_code == 422, (body, r.text)
            assert any(word in r.text for word in ("quality", "rating", "thumbs")), r.text
        good: list[dict[str, object]] = [{"rating": 4}, {"thumbs": "down"}, {"quality": 0.25}]
        for decision_id, grade in zip(ids, good, strict=True):
            assert c.post("/v1/feedback", json={"decision_id": decision_id, **grade}).status_code == 202
        stored = {r["decision_id"]: (r["quality"], r["grader"]) for r in _rows(s, "SELECT * FROM feedback")}
        assert stored == {ids[0]: (0.75, "client:rating-5"), ids[1]: (0.0, "client:thumbs"),
                          ids[2]: (0.25, "client:quality")}
        assert _jobs(s) == {}, "a sample rate of 0 grades nothing"


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    from email.utils import formatdate

    from serve.judge import retry_after

    assert retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert 25 <= (retry_after(httpx.Headers({"retry-after": formatdate(time.time() + 30, usegmt=True)})) or 0) <= 30
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after(httpx.Headers({})) is None

