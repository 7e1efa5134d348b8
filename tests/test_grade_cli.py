"""`router-ml grade`, end to end: real Parquet files cut from the shared MMLU-Pro benchmark, a real fake judge on
loopback (tests/judgekit.py), the real command line. Grading an export fills only its ungraded rows and the result
trains; an interrupted run (Ctrl-C, kill -9) resumes without judging a row twice; a judge that is down, slow,
rate-limited or answers garbage fails rows with the reason; bad input exits 2 naming the field; the agreement of a
judge with a known error rate is measured within its binomial interval."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import polars as pl
import pytest

from router_ml import settings
from router_ml.catalog import Catalog
from router_ml.cli import main
from router_ml.contracts import graded_only, load_benchmark, load_logs
from router_ml.fullinfo import FullInfo
from router_ml.graders import ExactMatch, Grade, GradeFailed, GradeRequest, Retry
from router_ml.simulate import simulate
from serve.grade_batch import BatchGrading, Job, grade_one
from serve.grade_progress import progress_path
from tests.conftest import slice_benchmark
from tests.judgekit import FakeJudgeUpstream, answer_text, prompt_key

JUDGE = "gpt-4o"


@pytest.fixture(scope="module")
def bench(shared_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 real MMLU-Pro prompts x 31 models (0/1 qualities), each row with the fake upstream's answer."""
    path = slice_benchmark(shared_benchmark, 10, tmp_path_factory.mktemp("grade") / "bench.parquet")
    frame = pl.read_parquet(path)
    answers = [answer_text(m, p) for m, p in zip(frame["model"], frame["prompt"])]
    frame.with_columns(answer=pl.Series(answers, dtype=pl.String)).write_parquet(path)
    return path


@pytest.fixture
def judge(bench: Path) -> Iterator[FakeJudgeUpstream]:
    """A fake judge that knows every benchmark answer's quality."""
    frame = pl.read_parquet(bench)
    with FakeJudgeUpstream() as fake:
        fake.truth = {(prompt_key(p), m): q for p, m, q in zip(frame["prompt"], frame["model"], frame["quality"])}
        yield fake


def judge_config(path: Path, judge: FakeJudgeUpstream, **grader: object) -> Path:
    """A service TOML whose judge is ``gpt-4o`` on the fake; ``grader`` overrides the [grader] fields."""
    fields: dict[str, object] = {
        "kind": "judge",
        "judge_model": JUDGE,
        "max_attempts": 2,
        "backoff_seconds": 0.01,
        "timeout_seconds": 5.0,
        "concurrency": 4,
    } | grader
    lines = ["[upstream]", f'endpoint = "{judge.url}"', "[grader]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Export:
    """A logged-traffic file with answers: ``truth`` holds every row's known quality by event id; rows in
    ``ungraded`` have a null quality (``gradable`` of them with an answer, the rest without)."""

    path: Path
    truth: dict[str, float]
    ungraded: set[str]
    gradable: set[str]


def make_export(bench: Path, path: Path, events: int, *, no_answer: int = 2, seed: int = 0) -> Export:
    """Simulated traffic over the benchmark; two thirds of the rows lose their quality, ``no_answer`` of those their
    answer too."""
    logs = simulate(FullInfo.from_benchmark(load_benchmark(bench)), events, seed=seed)
    truth = dict(zip(logs["event_id"], logs["quality"]))
    ungraded = logs.with_row_index("i").filter(pl.col("i") % 3 != 0)["event_id"].to_list()
    no_answers = set(ungraded[:no_answer])
    answers = [
        None if e in no_answers else answer_text(m, p)
        for e, m, p in zip(logs["event_id"], logs["model"], logs["prompt"])
    ]
    logs = logs.with_columns(
        quality=pl.when(pl.col("event_id").is_in(ungraded)).then(None).otherwise(pl.col("quality")),
        answer=pl.Series(answers, dtype=pl.String),
    )
    logs.write_parquet(path)
    return Export(path, truth, set(ungraded), set(ungraded) - no_answers)


def row(frame: pl.DataFrame, event_id: str) -> dict[str, Any]:
    return frame.filter(pl.col("event_id") == event_id).row(0, named=True)


def test_grading_an_export_fills_its_ungraded_rows_with_the_judges_verdicts_and_trains(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = make_export(bench, tmp_path / "logs.parquet", 60)
    config = judge_config(tmp_path / "serve.toml", judge)
    out = tmp_path / "graded.parquet"
    assert main(["grade", "--logs", str(export.path), "--config", str(config), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    n_skipped = len(export.ungraded - export.gradable)
    assert f"graded {len(export.gradable)}, failed 0, skipped {n_skipped}" in stdout
    assert judge.judged == len(export.gradable), "one judge call per gradable row"
    source = pl.read_parquet(export.path)
    graded = pl.read_parquet(out)
    assert graded.columns == [*source.columns, "grade_source", "grader", "grade_detail", "grade_cost_usd"]
    assert graded["event_id"].to_list() == source["event_id"].to_list()
    paid = Catalog.load(settings.default_catalog()).spec(JUDGE).cost_usd(100, 20)
    for event_id, known in export.truth.items():
        got = row(graded, event_id)
        if event_id in export.gradable:
            assert got["quality"] == known and got["grade_source"] == "judge"
            assert got["grader"].startswith(f"judge:{JUDGE}:")
            assert got["grade_cost_usd"] == pytest.approx(paid)
        elif event_id in export.ungraded:
            assert got["quality"] is None and got["grade_detail"] == "no answer" and got["grader"] is None
        else:
            assert {c: got[c] for c in source.columns} == row(source, event_id), "a row graded before is untouched"
            assert got["grade_source"] == "logged" and got["grader"] is None
    assert f"spend ${paid * len(export.gradable):.4f}" in stdout
    assert not progress_path(out).exists(), "a finished run removes its progress file"

    command = ["grade", "--logs", str(export.path), "--config", str(config), "-o", str(out)]
    assert main(command) == 2, "a finished run's output is not graded over (paying again) without --restart"
    one_error_line(capsys.readouterr().err, str(out), "exists", "--restart")
    split = graded_only(load_logs(out))
    assert split.n_ungraded == n_skipped
    # grading the output again (in place) finds nothing left to judge and changes nothing
    assert main(["grade", "--logs", str(out), "--config", str(config), "-o", str(out)]) == 0
    assert judge.judged == len(export.gradable)
    assert pl.read_parquet(out).equals(graded)
    assert main(["train", "--logs", str(out), "--clusters", "2", "--lam", "0.02"]) == 0
    assert "registered router-ml version 1" in capsys.readouterr().out


def sidecar_rows(path: Path) -> int:
    """Grades kept in a progress file (0 while it does not exist yet), read beside the writer."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM grades").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_run_resumes_without_judging_a_graded_row_again(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path, home: Path, sig: signal.Signals
) -> None:
    export = make_export(bench, tmp_path / "logs.parquet", 90)
    config = judge_config(tmp_path / "serve.toml", judge, concurrency=2)
    out = tmp_path / "graded.parquet"
    command = ["grade", "--logs", str(export.path), "--config", str(config), "-o", str(out)]
    judge.mode, judge.slow_seconds = "slow", 0.05
    env = {**os.environ, "PYTHONPATH": str(settings.REPO_ROOT), settings.HOME_ENV: str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router_ml.cli", *command], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while sidecar_rows(progress_path(out)) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    time.sleep(0.3)  # a request the child sent just before it stopped is counted by now
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "rerun the same command to resume" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "an interrupted run writes no output"
    kept, judged_before = sidecar_rows(progress_path(out)), judge.judged
    assert 10 <= kept < len(export.gradable)

    judge.mode = "ok"
    assert main(command) == 0
    assert judge.judged - judged_before == len(export.gradable) - kept, "the rows kept were not judged again"
    graded = pl.read_parquet(out)
    assert all(row(graded, e)["quality"] == export.truth[e] for e in export.gradable)
    assert not progress_path(out).exists()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("down", "HTTP 500"),
        ("garbage", "no JSON verdict"),
        ("ratelimit", "HTTP 429 (rate-limited)"),
        ("slow", "timeout"),
    ],
)
def test_a_failing_judge_fails_rows_with_the_reason_and_a_rerun_retries_only_those(
    bench: Path,
    judge: FakeJudgeUpstream,
    tmp_path: Path,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    reason: str,
) -> None:
    export = make_export(bench, tmp_path / "logs.parquet", 9, no_answer=0)
    config = judge_config(tmp_path / "serve.toml", judge, timeout_seconds=0.5, concurrency=len(export.gradable))
    out = tmp_path / "graded.parquet"
    command = ["grade", "--logs", str(export.path), "--config", str(config), "-o", str(out)]
    judge.mode, judge.slow_seconds = mode, 2.0
    started = time.monotonic()
    assert main(command) == 1
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert reason in err and "rerun the same command" in err
    assert judge.judged == 2 * len(export.gradable), "each row was tried max_attempts = 2 times"
    if mode == "ratelimit":
        assert elapsed >= 1.0, "the 429's Retry-After (1 s) wins over the 0.01 s backoff"
    failed = pl.read_parquet(out)
    for event_id in export.gradable:
        got = row(failed, event_id)
        assert got["quality"] is None and got["grade_source"] is None, "nothing is learned from a failed grade"
        assert got["grade_detail"].startswith("failed after 2 attempts: ") and reason in got["grade_detail"]
        paid = got["grade_cost_usd"]
        assert (paid > 0) if mode == "garbage" else (paid == 0), "an unparseable verdict was paid for all the same"
    assert graded_only(load_logs(out)).n_ungraded == len(export.ungraded)
    assert progress_path(out).exists(), "the progress file stays while rows failed"

    judge.mode = "ok"
    assert main(command) == 0
    assert judge.judged == 3 * len(export.gradable)
    assert all(row(pl.read_parquet(out), e)["quality"] == export.truth[e] for e in export.gradable)


def one_error_line(err: str, *expected: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], lines[0]


def test_bad_input_exits_2_with_one_line_naming_the_field(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = make_export(bench, tmp_path / "logs.parquet", 9)
    no_answer = tmp_path / "no_answer.parquet"
    pl.read_parquet(export.path).drop("answer").write_parquet(no_answer)
    numeric_answer = tmp_path / "numeric_answer.parquet"
    pl.read_parquet(export.path).with_columns(answer=pl.lit(1.0)).write_parquet(numeric_answer)
    config = judge_config(tmp_path / "serve.toml", judge)
    stranger = judge_config(tmp_path / "stranger.toml", judge, judge_model="no-such-model")
    out = str(tmp_path / "graded.parquet")
    grade = ["grade", "-o", out]
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        ([*grade, "--logs", str(no_answer), "--config", str(config)], ("column 'answer' is missing", "answer text")),
        ([*grade, "--logs", str(numeric_answer), "--config", str(config)], ("column 'answer' must be string",)),
        ([*grade, "--logs", str(tmp_path / "nope.parquet"), "--config", str(config)], ("file not found",)),
        ([*grade, "--logs", str(export.path), "--grader", "vibes"], ("--grader must be one of", "'vibes'")),
        ([*grade, "--logs", str(export.path), "--grader", "judge"], ("--grader judge needs --config",)),
        ([*grade, "--logs", str(export.path), "--config", str(stranger)], ("'grader.judge_model'", "no-such-model")),
        ([*grade, "--logs", str(export.path), "--grader", "exact"], ("column 'reference' is missing",)),
        ([*grade, "--logs", str(export.path)], ("no grader", "--grader")),
        (["grade", "--logs", str(export.path), "--grader", "json"], ("needs --logs F and -o F",)),
        (["grade", "--agreement", "--grader", "json"], ("--agreement needs --benchmark",)),
        (["grade", "--agreement", "--benchmark", str(no_answer), "--grader", "json"], ("benchmark",)),
        (["grade", "--agreement", "--benchmark", str(bench), "--grader", "json", "--limit", "1"], ("--limit",)),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        one_error_line(capsys.readouterr().err, *expected)
    assert judge.judged == 0 and not Path(out).exists()


def test_a_progress_file_of_another_input_is_refused_unless_restarted(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_export(bench, tmp_path / "first.parquet", 9, no_answer=0, seed=1)
    second = make_export(bench, tmp_path / "second.parquet", 9, no_answer=0, seed=2)
    config = judge_config(tmp_path / "serve.toml", judge, max_attempts=1)
    out = tmp_path / "graded.parquet"
    judge.mode = "down"
    assert main(["grade", "--logs", str(first.path), "--config", str(config), "-o", str(out)]) == 1
    assert progress_path(out).exists()
    judge.mode = "ok"
    other = ["grade", "--logs", str(second.path), "--config", str(config), "-o", str(out)]
    capsys.readouterr()
    assert main(other) == 2
    one_error_line(capsys.readouterr().err, str(progress_path(out)), "another input file", "--restart")
    assert main([*other, "--restart"]) == 0
    assert all(row(pl.read_parquet(out), e)["quality"] == second.truth[e] for e in second.gradable)


def test_a_check_grades_offline_without_a_config(bench: Path, tmp_path: Path, home: Path) -> None:
    export = make_export(bench, tmp_path / "logs.parquet", 30, no_answer=0)
    frame = pl.read_parquet(export.path)
    # every other row's reference is its own answer (a match), the others' another answer (no match)
    references = [a if i % 2 else a.upper() + " not" for i, a in enumerate(frame["answer"])]
    frame.with_columns(reference=pl.Series(references)).write_parquet(export.path)
    out = tmp_path / "graded.parquet"
    assert main(["grade", "--logs", str(export.path), "--grader", "exact", "-o", str(out)]) == 0
    graded = pl.read_parquet(out).with_row_index("i")
    mine = graded.filter(pl.col("event_id").is_in(list(export.gradable)))
    assert mine.height == len(export.gradable)
    assert mine["quality"].to_list() == [float(i % 2) for i in mine["i"]]
    assert set(mine["grade_source"]) == {"check"} and set(mine["grader"]) == {"exact:1"}
    assert mine["grade_cost_usd"].sum() == 0


def agreement_run(argv: list[str], out: Path) -> dict[str, Any]:
    assert main([*argv, "--json", str(out)]) == 0
    return cast(dict[str, Any], json.loads(out.read_text()))


def test_agreement_of_a_judge_with_a_known_error_rate(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A judge that flips the known 0/1 verdict with probability e = 0.2 agrees on 1 - e of 310 real rows, within a
    binomial 99.9% interval; its bias is e * (1 - 2 * mean known quality), within the same kind of interval."""
    error = 0.2
    judge.error_rate = error
    config = judge_config(tmp_path / "serve.toml", judge)
    report = agreement_run(["grade", "--agreement", "--benchmark", str(bench), "--config", str(config)], tmp_path / "a")
    known = pl.read_parquet(bench)
    figures = report["agreement"]
    assert figures["n"] == known.height and figures["failed"] == 0 and judge.judged == known.height
    assert abs(figures["agreement"] - (1 - error)) < 3.3 * math.sqrt(error * (1 - error) / known.height)
    expected_bias = error * (1 - 2 * known["quality"].mean())  # type: ignore[operator]
    assert abs(figures["bias"] - expected_bias) < 3.3 * math.sqrt(error / known.height)
    assert set(figures["bias_by_model"]) == set(known["model"])
    assert sum(report["graded_by_model"].values()) == known.height
    table = capsys.readouterr().out
    assert "agreement" in table and "correlation" in table and "bias by model" in table
    assert all(m in table for m in known["model"].unique())


def test_agreement_shows_a_judge_that_overrates_one_model(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path
) -> None:
    """A judge right on every model but one, whose every answer it calls perfect: that model's bias is exactly the
    share of its answers that are wrong, every other model's is 0, and agreement drops by those answers."""
    known = pl.read_parquet(bench)
    favoured = "llama-2-7b"
    for key, model in list(judge.truth):
        if model == favoured:
            judge.truth[key, model] = 1.0
    config = judge_config(tmp_path / "serve.toml", judge)
    report = agreement_run(["grade", "--agreement", "--benchmark", str(bench), "--config", str(config)], tmp_path / "a")
    figures = report["agreement"]
    theirs = known.filter(pl.col("model") == favoured)["quality"]
    wrong = len(theirs) - int(theirs.sum())
    assert wrong > 0, "the slice must hold answers of the favoured model that are wrong"
    assert figures["bias_by_model"][favoured] == pytest.approx(wrong / len(theirs))
    assert all(b == 0 for m, b in figures["bias_by_model"].items() if m != favoured)
    assert figures["agreement"] == pytest.approx(1 - wrong / known.height)

    sample = ["grade", "--agreement", "--benchmark", str(bench), "--config", str(config), "--limit", "40"]
    first = agreement_run([*sample, "--seed", "3"], tmp_path / "b")
    assert first["rows"] == 40 and first["agreement"]["n"] == 40
    assert first["graded_by_model"] == agreement_run([*sample, "--seed", "3"], tmp_path / "c")["graded_by_model"]


def test_agreement_with_a_judge_that_is_down_reports_why_and_exits_1(
    bench: Path, judge: FakeJudgeUpstream, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    judge.mode = "down"
    config = judge_config(tmp_path / "serve.toml", judge, max_attempts=1)
    out = tmp_path / "a.json"
    argv = ["grade", "--agreement", "--benchmark", str(bench), "--config", str(config), "--limit", "5"]
    assert main([*argv, "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["agreement"] is None and report["failures"] == {f"judge '{JUDGE}': HTTP 500": 5}
    captured = capsys.readouterr()
    assert "too few answers graded" in captured.out and "5 answer(s) could not be graded" in captured.err


# -- the batch runner's handling of a grader's faults ---------------------------------------------------------------
@dataclass(frozen=True)
class Faulty:
    """A grader that answers a fixed quality (even an impossible one), raises, or fails a few times first."""

    quality: object = 1.0
    raises: Exception | None = None
    fail_first: int = 0
    calls: list[float] | None = None
    name: ClassVar[str] = "faulty"
    version: ClassVar[str] = "1"

    def grade(self, request: GradeRequest) -> Grade:
        assert self.calls is not None
        self.calls.append(time.monotonic())
        if self.raises is not None:
            raise self.raises
        if len(self.calls) <= self.fail_first:
            raise GradeFailed("faulty: busy", retry_after=0.2 if len(self.calls) == 1 else None, cost_usd=0.001)
        grade = object.__new__(Grade)  # skips Grade's own check, as a grader that builds its answer another way could
        for name, value in {"quality": self.quality, "grader": self.name, "version": self.version}.items():
            object.__setattr__(grade, name, value)
        object.__setattr__(grade, "detail", "")
        object.__setattr__(grade, "cost_usd", 0.0)
        return grade


JOB = Job("k", GradeRequest("prompt", "answer"))


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Faulty(quality=math.nan), "quality must be a number in [0, 1], got nan"),
        (Faulty(quality=1.5), "got 1.5"),
        (Faulty(quality="0.5"), "got '0.5'"),
        (Faulty(raises=ZeroDivisionError("division by zero")), "raised ZeroDivisionError: division by zero"),
    ],
)
def test_a_grader_that_returns_no_quality_or_raises_fails_the_job_at_once(fault: Faulty, reason: str) -> None:
    grader = Faulty(fault.quality, fault.raises, calls=[])
    outcome = grade_one(grader, JOB, Retry(max_attempts=3, backoff_seconds=0.01))
    assert outcome.quality is None and reason in outcome.reason and outcome.attempts == 1
    assert grader.calls is not None and len(grader.calls) == 1, "a fault that would repeat is not retried"


def test_a_failed_attempt_is_retried_after_its_backoff_or_retry_after() -> None:
    grader = Faulty(fail_first=2, calls=[])
    outcome = grade_one(grader, JOB, Retry(max_attempts=3, backoff_seconds=0.05))
    assert outcome.quality == 1.0 and outcome.attempts == 3
    assert outcome.cost_usd == pytest.approx(0.002), "the failed attempts' cost is counted"
    assert grader.calls is not None
    first, second = grader.calls[1] - grader.calls[0], grader.calls[2] - grader.calls[1]
    assert first >= 0.2, "Retry-After (0.2 s) wins over the 0.05 s backoff"
    assert second >= 0.1, "the second wait doubles the backoff"
    assert Retry(5, 2.0, max_backoff_seconds=5.0).delay(4) == 5.0
    assert Retry(5, 2.0).delay(1, retry_after=7.0) == 7.0
    assert BatchGrading(ExactMatch(), Retry(), 1).source == "check"
