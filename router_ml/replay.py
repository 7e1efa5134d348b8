"""Exact replay on a full-information benchmark: what a router's choices would have scored and cost."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput
from router_ml.fullinfo import FullInfo


@dataclass(frozen=True)
class ReplayResult:
    """Mean quality and mean cost per prompt (USD) of one router on a benchmark."""

    router: str
    quality: float
    cost_usd: float

    def to_dict(self) -> dict[str, float | str]:
        """JSON-ready form."""
        return asdict(self)


def replay_choices(table: FullInfo, choices: npt.NDArray[np.int64], router: str) -> ReplayResult:
    """Replay one model index per prompt (catalog order = ``table.models``)."""
    rows = np.arange(len(choices))
    q, c = table.quality[rows, choices], table.cost[rows, choices]
    if np.isnan(q).any():
        raise InvalidInput(f"replay: router '{router}' chose a model the benchmark lacks for some prompts")
    return ReplayResult(router, float(q.mean()), float(c.mean()))


def replay_distribution(table: FullInfo, probs: npt.NDArray[np.float64], router: str) -> ReplayResult:
    """Expected quality and cost under per-prompt action distributions (rows sum to 1)."""
    q = np.nan_to_num(table.quality) * probs
    c = np.nan_to_num(table.cost) * probs
    return ReplayResult(router, float(q.sum(axis=1).mean()), float(c.sum(axis=1).mean()))


def single_models(table: FullInfo) -> list[ReplayResult]:
    """Every model on its own (over the prompts the benchmark has it for)."""
    return [
        ReplayResult(m, float(np.nanmean(table.quality[:, j])), float(np.nanmean(table.cost[:, j])))
        for j, m in enumerate(table.models)
    ]


def best_single(table: FullInfo) -> ReplayResult:
    """The single model with the highest mean quality (ties: the cheaper)."""
    return max(single_models(table), key=lambda r: (r.quality, -r.cost_usd))
