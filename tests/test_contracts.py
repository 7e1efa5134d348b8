"""Validation of benchmarks and logged traffic on real Parquet files: every contract breach names its column."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from router_ml.contracts import (
    DataValidationError,
    graded_only,
    load_benchmark,
    load_logs,
    validate_benchmark,
    validate_logs,
)
from router_ml.fullinfo import FullInfo
from router_ml.simulate import simulate


def _logs(n: int = 4) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "timestamp": [datetime(2024, 1, 1, 0, 0, i) for i in range(n)],
            "prompt": [f"question {i}?" for i in range(n)],
            "model": ["a", "b", "a", "b"][:n],
            "candidates": [["a", "b"]] * n,
            "propensity": [0.5] * n,
            "quality": [1.0, 0.0, None, 1.0][:n],
            "cost_usd": [0.001] * n,
            "policy_version": ["uniform"] * n,
            "tenant": ["t1"] * n,
        }
    )


def _bench() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "prompt_id": ["p1", "p1", "p2", "p2"],
            "prompt": ["q1", "q1", "q2", "q2"],
            "category": ["math", "math", "law", "law"],
            "model": ["a", "b", "a", "b"],
            "quality": [1.0, 0.0, 0.0, 1.0],
            "cost_usd": [0.01, 0.001, 0.01, 0.001],
        }
    )


def test_valid_logs_pass_and_keep_context_columns() -> None:
    out = validate_logs(_logs())
    assert out.height == 4
    assert "tenant" in out.columns
    assert out.schema["quality"] == pl.Float64


def test_ungraded_rows_are_counted_not_dropped_silently() -> None:
    split = graded_only(validate_logs(_logs()))
    assert split.graded.height == 3
    assert split.n_ungraded == 1


@pytest.mark.parametrize(
    ("column", "change", "fragment"),
    [
        ("quality", pl.Series("quality", [1.5, 0.0, None, 1.0]), "[0, 1]"),
        ("quality", pl.Series("quality", [-0.1, 0.0, None, 1.0]), "[0, 1]"),
        ("cost_usd", pl.Series("cost_usd", [-1.0, 0.0, 0.0, 0.0]), ">= 0"),
        ("cost_usd", pl.Series("cost_usd", [float("nan"), 0.0, 0.0, 0.0]), ">= 0"),
        ("propensity", pl.Series("propensity", [0.0, 0.5, 0.5, 0.5]), "(0, 1]"),
        ("propensity", pl.Series("propensity", [1.2, 0.5, 0.5, 0.5]), "(0, 1]"),
        ("event_id", pl.Series("event_id", ["e0", "e0", "e2", "e3"]), "duplicate"),
        ("prompt", pl.Series("prompt", ["ok", "  ", "ok", "ok"]), "empty"),
        ("model", pl.Series("model", ["a", "c", "a", "b"]), "not among"),
        ("candidates", pl.Series("candidates", [["a", "b"], [], ["a", "b"], ["a", "b"]]), "empty"),
    ],
)
def test_bad_log_values_name_column_and_rows(column: str, change: pl.Series, fragment: str) -> None:
    bad = _logs().with_columns(change)
    with pytest.raises(DataValidationError) as err:
        validate_logs(bad)
    assert err.value.column == column
    assert fragment in str(err.value)
    assert err.value.rows, "the first bad rows are named"
    assert f"'{column}'" in str(err.value)


def test_missing_column_and_wrong_type_are_named() -> None:
    with pytest.raises(DataValidationError, match="'propensity' is missing"):
        validate_logs(_logs().drop("propensity"))
    with pytest.raises(DataValidationError, match="'quality' must be number"):
        validate_logs(_logs().with_columns(pl.col("quality").cast(pl.String)))
    with pytest.raises(DataValidationError, match="'candidates' must be list of strings"):
        validate_logs(_logs().with_columns(pl.lit("a,b").alias("candidates")))


def test_timestamps_accept_iso_strings_and_reject_garbage() -> None:
    iso = _logs().with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert validate_logs(iso).schema["timestamp"] == pl.Datetime("us")
    bad = iso.with_columns(pl.Series("timestamp", ["2024-01-01T00:00:00Z", "yesterday", None, "x"]))
    with pytest.raises(DataValidationError) as err:
        validate_logs(bad)
    assert err.value.column == "timestamp"


def test_benchmark_checks() -> None:
    assert validate_benchmark(_bench()).height == 4
    assert validate_benchmark(_bench().drop("category"))["category"].null_count() == 4
    dup = pl.concat([_bench(), _bench().head(1)])
    with pytest.raises(DataValidationError, match="repeats a \\(prompt_id, model\\) pair") as err:
        validate_benchmark(dup)
    assert err.value.rows == [0, 4]
    with pytest.raises(DataValidationError, match="'quality' must lie in"):
        validate_benchmark(_bench().with_columns(pl.Series("quality", [2.0, 0.0, 0.0, 1.0])))
    with pytest.raises(DataValidationError, match="'prompt' is empty"):
        validate_benchmark(_bench().with_columns(pl.Series("prompt", ["", "", "q2", "q2"])))
    with pytest.raises(DataValidationError, match="'prompt_id' is missing"):
        validate_benchmark(_bench().drop("prompt_id"))


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        load_logs(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(DataValidationError, match="cannot read"):
        load_benchmark(junk)


def test_parquet_round_trip_of_simulated_logs(small_benchmark: Path, tmp_path: Path) -> None:
    table = FullInfo.from_benchmark(load_benchmark(small_benchmark))
    logs = simulate(table, 500, seed=3)
    path = tmp_path / "logs.parquet"
    logs.write_parquet(path)
    back = load_logs(path)
    assert back.equals(logs)
