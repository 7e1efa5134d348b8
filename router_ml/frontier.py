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

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from router_ml.errors import InvalidInput


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
        raise InvalidInput("frontier: the reference cost must be > 0")
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
        raise InvalidInput("frontier: a router needs at least one (cost, quality) point")
    return FrontierSummary(
        q_max=float(max(q for _, q in points)),
        cost_at_parity=cost_at(points, best_quality, best_cost),
        cost_at_97_5=cost_at(points, 0.975 * best_quality, best_cost),
        auc=running_max_auc(points, best_cost),
    )


def lam_sweep(n: int = 24, low: float = 1e-4, high: float = 10.0) -> list[float]:
    """Log-spaced ``lam`` values, plus 0 (pure quality)."""
    return [0.0, *np.geomspace(low, high, n - 1).tolist()]


def hull_quality(singles: Sequence[tuple[float, float]], cost: float) -> float:
    """The single-model hull at ``cost``: the best quality of a random mixture of at most two of the ``singles``
    ((cost, quality) points) whose mean cost is at most ``cost``; ``-inf`` when even the cheapest costs more."""
    best = -np.inf
    for c_a, q_a in singles:
        if c_a <= cost:
            best = max(best, q_a)
        for c_b, q_b in singles:
            if c_a < cost < c_b:
                w = (cost - c_a) / (c_b - c_a)
                best = max(best, (1 - w) * q_a + w * q_b)
    return float(best)


def hull_points(singles: Sequence[tuple[float, float]], per_segment: int = 24) -> list[tuple[float, float]]:
    """The single-model hull as points: its vertices and ``per_segment`` mixtures along each edge (so the step
    function of :func:`running_max_auc` follows the straight edges closely)."""
    pts = sorted(set(singles))
    hull: list[tuple[float, float]] = []
    for p in pts:
        if hull and p[1] <= hull[-1][1]:
            continue
        while len(hull) >= 2:
            (c0, q0), (c1, q1) = hull[-2], hull[-1]
            if (c1 - c0) * (p[1] - q0) - (q1 - q0) * (p[0] - c0) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    out = [hull[0]]
    for (c0, q0), (c1, q1) in itertools.pairwise(hull):
        out += [(c0 + (c1 - c0) * t, q0 + (q1 - q0) * t) for t in np.linspace(0, 1, per_segment + 1)[1:]]
    return out
