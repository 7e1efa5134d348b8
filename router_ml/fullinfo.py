"""A benchmark as dense matrices: quality and cost of every (prompt, model) pair.

This is the form that simulation and exact replay work on. Pairs missing from the benchmark are
NaN and count as "model not offered" for that prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from router_ml.contracts import DataValidationError

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FullInfo:
    """Prompts x models matrices of a validated benchmark frame."""

    prompt_ids: list[str]
    prompts: list[str]
    categories: list[str | None]
    models: list[str]
    quality: Floats
    cost: Floats

    @classmethod
    def from_benchmark(cls, df: pl.DataFrame, models: list[str] | None = None) -> FullInfo:
        """Pivot a validated benchmark; ``models`` fixes the column order (default: sorted names)."""
        names = models if models is not None else sorted(df["model"].unique().to_list())
        unknown = set(df["model"].unique().to_list()) - set(names)
        if unknown:
            raise DataValidationError("benchmark", "model", f"has models outside the catalog: {sorted(unknown)[:5]}")
        prompts = df.group_by("prompt_id", maintain_order=True).agg(
            pl.col("prompt").first(), pl.col("category").first()
        )
        conflicting = df.group_by("prompt_id").agg(pl.col("prompt").n_unique().alias("n")).filter(pl.col("n") > 1)
        if conflicting.height:
            raise DataValidationError(
                "benchmark", "prompt", f"differs between rows of prompt_id {conflicting['prompt_id'][0]!r}"
            )
        p_index = {pid: i for i, pid in enumerate(prompts["prompt_id"].to_list())}
        m_index = {m: j for j, m in enumerate(names)}
        quality = np.full((len(p_index), len(names)), np.nan)
        cost = np.full_like(quality, np.nan)
        rows = np.array([p_index[p] for p in df["prompt_id"].to_list()], dtype=np.int64)
        cols = np.array([m_index[m] for m in df["model"].to_list()], dtype=np.int64)
        quality[rows, cols] = df["quality"].to_numpy()
        cost[rows, cols] = df["cost_usd"].to_numpy()
        return cls(
            prompt_ids=prompts["prompt_id"].to_list(),
            prompts=prompts["prompt"].to_list(),
            categories=prompts["category"].to_list(),
            models=names,
            quality=quality,
            cost=cost,
        )

    @property
    def offered(self) -> npt.NDArray[np.bool_]:
        """Which (prompt, model) pairs the benchmark has."""
        return ~np.isnan(self.quality)

    def subset(self, rows: npt.NDArray[np.int64]) -> FullInfo:
        """The table restricted to prompt rows ``rows``."""
        return FullInfo(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            prompts=[self.prompts[i] for i in rows],
            categories=[self.categories[i] for i in rows],
            models=self.models,
            quality=self.quality[rows],
            cost=self.cost[rows],
        )
