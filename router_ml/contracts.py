"""The two data contracts, checked on load: benchmarks (full information) and logged traffic (bandit feedback).

*Benchmark*: one row per (prompt, model) with ``prompt_id, prompt, model, quality, cost_usd`` and
optionally ``category``, ``input_tokens``, ``output_tokens``; other columns are ignored.

*Logged traffic*: one row per routing decision with ``event_id, timestamp, prompt, model,
candidates, propensity, quality, cost_usd, policy_version``; ``quality`` is null until graded and
any further column (e.g. ``tenant``) is kept as context.

Every check raises :class:`DataValidationError`, which names the column and the first bad rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from router_ml.errors import InvalidInput

BENCHMARK_COLUMNS: dict[str, str] = {
    "prompt_id": "string",
    "prompt": "string",
    "model": "string",
    "quality": "number",
    "cost_usd": "number",
}
BENCHMARK_OPTIONAL: dict[str, str] = {"category": "string", "input_tokens": "number", "output_tokens": "number"}

LOG_COLUMNS: dict[str, str] = {
    "event_id": "string",
    "timestamp": "datetime",
    "prompt": "string",
    "model": "string",
    "candidates": "list of strings",
    "propensity": "number",
    "quality": "number",
    "cost_usd": "number",
    "policy_version": "string",
}

_SHOWN_ROWS = 5


class DataValidationError(InvalidInput):
    """A file or frame breaks a contract. ``column`` and ``rows`` (0-based, the first few) say where."""

    def __init__(self, what: str, column: str | None, problem: str, rows: list[int] | None = None) -> None:
        self.column = column
        self.rows = rows or []
        where = f"column '{column}' " if column else ""
        shown = ""
        if rows:
            shown = f" (rows {rows[:_SHOWN_ROWS]}{' ...' if len(rows) > _SHOWN_ROWS else ''})"
        super().__init__(f"{what}: {where}{problem}{shown}")


def read_parquet(path: str | Path, what: str) -> pl.DataFrame:
    """Read a Parquet file, turning I/O and format failures into a :class:`DataValidationError`."""
    p = Path(path)
    if not p.exists():
        raise DataValidationError(what, None, f"file not found: {p}")
    try:
        return pl.read_parquet(p)
    except Exception as exc:  # polars raises several unrelated types for unreadable files
        raise DataValidationError(what, None, f"cannot read {p} as Parquet: {exc}") from exc


def _bad_rows(df: pl.DataFrame, mask: pl.Expr) -> list[int]:
    hits = df.with_row_index("_row").filter(mask.fill_null(False)).head(_SHOWN_ROWS + 1)
    return [int(i) for i in hits["_row"]]


def _check(df: pl.DataFrame, what: str, column: str, mask: pl.Expr, problem: str) -> None:
    rows = _bad_rows(df, mask)
    if rows:
        total = df.select(mask.fill_null(False).sum()).item()
        raise DataValidationError(what, column, f"{problem}: {total} bad row(s)", rows)


def _coerce(df: pl.DataFrame, what: str, spec: dict[str, str], *, required: bool) -> pl.DataFrame:
    missing = [c for c in spec if c not in df.columns]
    if required and missing:
        raise DataValidationError(what, missing[0], f"is missing (required columns: {', '.join(spec)})")
    casts: list[pl.Expr] = []
    for col, kind in spec.items():
        if col not in df.columns:
            continue
        dtype = df.schema[col]
        if kind == "string" and dtype != pl.String:
            raise DataValidationError(what, col, f"must be {kind}, got {dtype}")
        if kind == "number":
            if not (dtype.is_numeric() or dtype == pl.Null):
                raise DataValidationError(what, col, f"must be {kind}, got {dtype}")
            casts.append(pl.col(col).cast(pl.Float64))
        if kind == "list of strings" and dtype != pl.List(pl.String):
            raise DataValidationError(what, col, f"must be {kind}, got {dtype}")
        if kind == "datetime":
            casts.append(_as_datetime(df, what, col))
    return df.with_columns(casts) if casts else df


def _as_datetime(df: pl.DataFrame, what: str, col: str) -> pl.Expr:
    dtype = df.schema[col]
    if isinstance(dtype, pl.Datetime):
        return pl.col(col).dt.replace_time_zone(None) if dtype.time_zone else pl.col(col)
    if dtype == pl.String:
        parsed = df.select(pl.col(col).str.to_datetime(strict=False, time_zone="UTC"))[col]
        bad = parsed.is_null() & df[col].is_not_null()
        if bad.any():
            rows = [int(i) for i in bad.arg_true().head(_SHOWN_ROWS + 1)]
            raise DataValidationError(what, col, "has strings that are not ISO-8601 datetimes", rows)
        return pl.col(col).str.to_datetime(strict=False, time_zone="UTC").dt.replace_time_zone(None)
    raise DataValidationError(what, col, f"must be a datetime or an ISO-8601 string, got {dtype}")


def _check_common(df: pl.DataFrame, what: str) -> None:
    _check(df, what, "prompt", pl.col("prompt").is_null() | (pl.col("prompt").str.strip_chars() == ""), "is empty")
    _check(df, what, "model", pl.col("model").is_null() | (pl.col("model") == ""), "is empty")
    q = pl.col("quality")
    _check(df, what, "quality", q.is_nan() | (q < 0) | (q > 1), "must lie in [0, 1]")
    c = pl.col("cost_usd")
    _check(df, what, "cost_usd", c.is_null() | c.is_nan() | (c < 0) | c.is_infinite(), "must be a finite number >= 0")


def validate_benchmark(df: pl.DataFrame, what: str = "benchmark") -> pl.DataFrame:
    """Check a full-information benchmark frame and return it with numeric columns as Float64.

    ``category`` is added as a null column when absent; it is a label of the benchmark, used by the
    per-category reference router only, never as a policy feature.
    """
    df = _coerce(df, what, BENCHMARK_COLUMNS, required=True)
    df = _coerce(df, what, BENCHMARK_OPTIONAL, required=False)
    if df.height == 0:
        raise DataValidationError(what, None, "has no rows")
    _check(df, what, "prompt_id", pl.col("prompt_id").is_null(), "is null")
    _check(df, what, "quality", pl.col("quality").is_null(), "is null (a benchmark is fully graded)")
    _check_common(df, what)
    _check(df, what, "prompt_id", pl.struct("prompt_id", "model").is_duplicated(), "repeats a (prompt_id, model) pair")
    if "category" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("category"))
    return df


def validate_logs(df: pl.DataFrame, what: str = "logs") -> pl.DataFrame:
    """Check a logged-traffic frame; ungraded rows (null ``quality``) are kept and left for the caller to count."""
    df = _coerce(df, what, LOG_COLUMNS, required=True)
    if df.height == 0:
        raise DataValidationError(what, None, "has no rows")
    _check(df, what, "event_id", pl.col("event_id").is_null() | (pl.col("event_id") == ""), "is empty")
    _check(df, what, "event_id", pl.col("event_id").is_duplicated(), "has duplicate ids")
    _check(df, what, "timestamp", pl.col("timestamp").is_null(), "is null")
    _check_common(df, what)
    p = pl.col("propensity")
    _check(df, what, "propensity", p.is_null() | p.is_nan() | (p <= 0) | (p > 1), "must lie in (0, 1]")
    _check(df, what, "candidates", pl.col("candidates").is_null() | (pl.col("candidates").list.len() == 0), "is empty")
    _check(df, what, "model", ~pl.col("candidates").list.contains(pl.col("model")), "is not among the row's candidates")
    return df


@dataclass(frozen=True)
class GradedLogs:
    """Logged traffic split for learning: the graded rows, and how many ungraded rows were skipped."""

    graded: pl.DataFrame
    n_ungraded: int


def graded_only(logs: pl.DataFrame) -> GradedLogs:
    """Keep the rows with a quality grade and count the rest."""
    graded = logs.filter(pl.col("quality").is_not_null())
    return GradedLogs(graded=graded, n_ungraded=logs.height - graded.height)


def load_benchmark(path: str | Path) -> pl.DataFrame:
    """Read and validate a benchmark Parquet file."""
    return validate_benchmark(read_parquet(path, f"benchmark {path}"), f"benchmark {path}")


def load_logs(path: str | Path) -> pl.DataFrame:
    """Read and validate a logged-traffic Parquet file."""
    return validate_logs(read_parquet(path, f"logs {path}"), f"logs {path}")
