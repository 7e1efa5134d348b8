"""Turn a full-information benchmark into logged traffic under a known logging policy.

Each simulated event draws a prompt uniformly (with replacement), lets the logging policy pick a
model among those the benchmark has for that prompt, and records only that model's outcome plus the
exact probability it was picked with. Because the truth is known, every learner and estimator can be
checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import numpy as np
import numpy.typing as npt
import polars as pl

from router_ml.errors import InvalidInput
from router_ml.fullinfo import FullInfo
from router_ml.sampling import draw


class LoggingPolicy(Protocol):
    """A context-free policy that gives each offered model a probability."""

    @property
    def name(self) -> str:
        """Written to the ``policy_version`` column."""
        ...

    def probabilities(self, models: list[str], offered: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """Probabilities over ``models`` (zero where not ``offered``), summing to 1."""
        ...


@dataclass(frozen=True)
class Uniform:
    """Every offered model with equal probability."""

    @property
    def name(self) -> str:
        """``uniform``."""
        return "uniform"

    def probabilities(self, models: list[str], offered: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """``1 / #offered`` for each offered model."""
        p: npt.NDArray[np.float64] = offered.astype(np.float64)
        p /= p.sum()
        return p


@dataclass(frozen=True)
class EpsilonGreedy:
    """A fixed model with probability ``1 - epsilon`` (plus its share of the uniform part), else uniform."""

    model: str
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon <= 1.0:
            raise InvalidInput(f"simulate: 'epsilon' must lie in (0, 1], got {self.epsilon}")

    @property
    def name(self) -> str:
        """``epsilon-greedy:<model>:<epsilon>``."""
        return f"epsilon-greedy:{self.model}:{self.epsilon}"

    def probabilities(self, models: list[str], offered: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
        """``epsilon / #offered`` everywhere offered, plus ``1 - epsilon`` on the fixed model if offered."""
        if self.model not in models:
            raise InvalidInput(f"simulate: epsilon-greedy model '{self.model}' is not in the benchmark")
        p: npt.NDArray[np.float64] = offered.astype(np.float64)
        p *= self.epsilon / p.sum()
        j = models.index(self.model)
        if offered[j]:
            p[j] += 1.0 - self.epsilon
        p /= p.sum()
        return p


def simulate(
    table: FullInfo,
    n_events: int,
    *,
    seed: int = 0,
    logging: LoggingPolicy | None = None,
    start: datetime | None = None,
) -> pl.DataFrame:
    """``n_events`` rows of logged traffic (the project's schema) with the true propensities.

    Extra columns: ``prompt_id`` (to join the truth back). Timestamps are one second apart.
    """
    if n_events < 1:
        raise InvalidInput(f"simulate: 'events' must be >= 1, got {n_events}")
    policy = logging or Uniform()
    rng = np.random.default_rng(seed)
    offered = table.offered
    rows = rng.integers(0, len(table.prompt_ids), size=n_events)
    chosen = np.empty(n_events, dtype=np.int64)
    propensity = np.empty(n_events, dtype=np.float64)
    cache: dict[bytes, npt.NDArray[np.float64]] = {}
    uniforms = rng.random(n_events)
    for i, r in enumerate(rows):
        mask = offered[r]
        key = mask.tobytes()
        if key not in cache:
            cache[key] = policy.probabilities(table.models, mask)
        probs = cache[key]
        j = draw(probs, float(uniforms[i]))
        chosen[i], propensity[i] = j, probs[j]
    candidates = {key: [m for m, ok in zip(table.models, np.frombuffer(key, dtype=np.bool_)) if ok] for key in cache}
    t0 = start or datetime(2024, 1, 1)
    return pl.DataFrame(
        {
            "event_id": [f"sim-{seed}-{i:08d}" for i in range(n_events)],
            "timestamp": [t0 + timedelta(seconds=i) for i in range(n_events)],
            "prompt": [table.prompts[r] for r in rows],
            "model": [table.models[j] for j in chosen],
            "candidates": [candidates[offered[r].tobytes()] for r in rows],
            "propensity": propensity,
            "quality": table.quality[rows, chosen],
            "cost_usd": table.cost[rows, chosen],
            "policy_version": [policy.name] * n_events,
            "prompt_id": [table.prompt_ids[r] for r in rows],
        },
        schema_overrides={"candidates": pl.List(pl.String), "timestamp": pl.Datetime("us")},
    )
