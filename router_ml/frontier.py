"""Cost-quality frontiers and the four numbers that summarise one against the best single model.

A router traced over a sweep of ``lam`` gives points (mean cost per prompt, mean quality). Against the
best single model (quality ``q*``, cost ``c*``):

* ``q_max``: the highest quality among the points.
* ``cost_at_parity``: the lowest point cost, as a fraction of ``c*``, whose quality is at least ``q*``
  (``None`` if no point reaches it).
* ``cost_at_97_5``: the same at ``0.975 * q*``.
* ``auc``: the area under the running maximum of quality over cost on ``[0, c*]``, divided by ``c*``
  (a step function: at cost ``c`` it is the best quality of any point costing at most ``c``, else 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrontierSummary:
    """The four numbers of one router."""

    q_max: float
    cost_at_parity: float | None
    cost_at_97_5: float | None
    auc: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready form."""
        return {
            "q_max": self.q_max,
            "cost_at_parity": self.cost_at_parity,
            "cost_at_97_5": self.cost_at_97_5,
            "auc": self.auc,
        }


def cost_at(points: Sequence[tuple[float, float]], quality: float, ref_cost: float) -> float | None:
    """Lowest cost / ``ref_cost`` among points with quality >= ``quality`` (``None`` if none)."""
    costs = [c for c, q in points if q >= quality - 1e-12]
    return min(costs) / ref_cost if costs else None


def running_max_auc(points: Sequence[tuple[float, float]], ref_cost: float) -> float:
    """Normalised area under the running maximum of quality over cost on ``[0, ref_cost]``."""
    if ref_cost <= 0:
        raise ValueError("frontier: the reference cost must be > 0")
    inside = sorted((c, q) for c, q in points if c <= ref_cost)
    area, best = 0.0, 0.0
    edges = [c for c, _ in inside] + [ref_cost]
    for (c, q), nxt in zip(inside, edges[1:]):
        best = max(best, q)
        area += best * (nxt - c)
    return area / ref_cost


def summarise(points: Sequence[tuple[float, float]], best_quality: float, best_cost: float) -> FrontierSummary:
    """The four numbers of a router's points against the best single model."""
    if not points:
        raise ValueError("frontier: a router needs at least one (cost, quality) point")
    return FrontierSummary(
        q_max=float(max(q for _, q in points)),
        cost_at_parity=cost_at(points, best_quality, best_cost),
        cost_at_97_5=cost_at(points, 0.975 * best_quality, best_cost),
        auc=running_max_auc(points, best_cost),
    )


def lam_sweep(n: int = 24, low: float = 1e-4, high: float = 10.0) -> list[float]:
    """Log-spaced ``lam`` values, plus 0 (pure quality)."""
    return [0.0, *np.geomspace(low, high, n - 1).tolist()]
