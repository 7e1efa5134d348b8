"""Lambda at decision time: re-price a policy's decision for another cost weight, and hold a spend budget.

A policy's VW model learns quality (or, for epsilon-greedy policies, the reward at their own ``lam0``).
For the reward at ``lam``, each model's expected reward shifts by ``-(lam - lam0) * c_a``, where
``c_a`` is the model's expected cost per 1,000 requests on this prompt
(:meth:`router_ml.cost_model.CostModel.per_1k`).

SquareCB (Foster and Rakhlin, 2020) turns VW's predicted costs ``s_a`` into probabilities
``p_a = 1 / (K + gamma * (s_a - s_best))`` for every non-best action, the best one taking the rest,
with ``gamma = gamma_scale * sqrt(updates)``. The rule inverts exactly, so the score gaps come back from
the distribution (:func:`score_gaps`), are shifted by the cost term, and go through the same rule again
(:func:`retarget`). The result is SquareCB's own distribution for the reward at ``lam``; the probability
logged with a decision is the one it was sampled with, so off-policy evaluation stays valid.

:class:`DualLambda` adds a Lagrange multiplier ``mu >= 0`` to lambda for the constraint *mean cost per
1,000 requests <= target*, moved by projected sub-gradient steps on the observed spend.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput

Probs = npt.NDArray[np.float64]


def score_gaps(probs: Probs, gamma: float) -> Probs:
    """Invert SquareCB: each offered action's predicted-cost gap to the best one, ``(1/p_a - K) / gamma``.

    Actions with probability 0 (not offered) get ``inf``; the best action gets 0.
    """
    if gamma <= 0:
        raise InvalidInput(f"budget: 'gamma' must be > 0, got {gamma}")
    offered = probs > 0
    k = int(offered.sum())
    gaps = np.full(probs.shape, np.inf)
    with np.errstate(divide="ignore"):
        gaps[offered] = np.maximum((1.0 / probs[offered] - k) / gamma, 0.0)
    gaps[int(np.argmax(probs))] = 0.0
    return gaps


def squarecb(gaps: Probs, gamma: float) -> Probs:
    """SquareCB's distribution for predicted-cost gaps (``inf`` = not offered)."""
    offered = np.isfinite(gaps)
    k = int(offered.sum())
    best = int(np.argmin(np.where(offered, gaps, np.inf)))
    rel = np.where(offered, gaps - gaps[best], 0.0)
    probs = np.where(offered, 1.0 / (k + gamma * rel), 0.0)
    probs[best] = 0.0
    probs[best] = max(1.0 - float(probs.sum()), 0.0)
    return np.asarray(probs, dtype=np.float64)


def retarget(probs: Probs, gamma: float, extra_cost: Probs) -> Probs:
    """The distribution SquareCB would give if each action's predicted cost rose by ``extra_cost``.

    For a reward weight ``lam`` instead of the policy's ``lam0``, ``extra_cost = (lam - lam0) * c_per_1k``.
    """
    if not np.any(extra_cost):
        return probs
    return squarecb(score_gaps(probs, gamma) + extra_cost, gamma)


MAX_GRADIENT = 10.0
"""One call at 100x the target moves the multiplier no more than one at 11x: a single outlier cannot flip routing."""


@dataclass
class DualLambda:
    """A budget as a dual variable: ``mu <- max(0, mu + step * min((c_t - target) / target, 10))`` per call.

    ``c_t`` is the call's cost in USD per 1,000 such calls. While spend runs above ``target`` the
    multiplier grows and decisions move to cheaper models; below it, it decays back to 0. The
    effective weight is ``lam + mu``. Thread-safe: costs arrive from request handlers.
    """

    target_usd_per_1k: float
    step: float = 0.01
    mu: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_usd_per_1k) and self.target_usd_per_1k > 0):
            raise InvalidInput(f"budget: 'target_usd_per_1k' must be > 0, got {self.target_usd_per_1k}")
        if not (math.isfinite(self.step) and self.step > 0):
            raise InvalidInput(f"budget: 'step' must be > 0, got {self.step}")

    def observe(self, cost_usd: float, *, calls: int = 1) -> float:
        """Take one call's cost; returns the new multiplier. Spend that comes with no call of its own (``calls=0``:
        grading an answer already counted) moves the multiplier up by its share of the target."""
        with self._lock:
            excess = cost_usd * 1000.0 - calls * self.target_usd_per_1k
            gradient = min(excess / self.target_usd_per_1k, MAX_GRADIENT)
            self.mu = max(0.0, self.mu + self.step * gradient)
            return self.mu


@dataclass
class QualityFloor:
    """Keep the router within ``tolerance`` of the reference model's quality, as the live savings estimate sees it.

    A factor ``rho`` in ``[min_factor, 1]`` multiplies the cost weight of every router decision. After every
    ``every`` new graded decisions (and not before ``min_graded``), it is checked against the running doubly robust
    estimate of *router minus reference* quality (:class:`router_ml.savings.LiveSavings`):

    * the interval's upper bound below ``-tolerance`` (the router is worse by more than the tolerance, with
      confidence): ``rho <- max(min_factor, rho * (1 - step))``, so decisions move toward quality;
    * its lower bound above ``-tolerance`` (the floor holds with confidence): ``rho <- min(1, rho / (1 - step))``.

    Thread-safe. With a budget too, the effective weight is ``rho * (lam + mu)``: the floor scales the budget's
    weight, so while the floor is breached it wins over the budget.
    """

    tolerance: float
    step: float = 0.2
    min_graded: int = 200
    every: int = 50
    min_factor: float = 0.01
    factor: float = 1.0
    _checked_at: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise InvalidInput(f"quality floor: 'tolerance' must be a number >= 0, got {self.tolerance}")
        if not 0 < self.step < 1 or not 0 < self.min_factor <= 1:
            raise InvalidInput("quality floor: 'step' must lie in (0, 1) and 'min_factor' in (0, 1]")
        if self.min_graded < 2 or self.every < 1:
            raise InvalidInput("quality floor: 'min_graded' must be >= 2 and 'every' >= 1")

    def check(self, graded: int, diff_low: float, diff_high: float) -> float:
        """Take the estimate after ``graded`` graded decisions (``[diff_low, diff_high]``: the interval of router
        minus reference quality); returns the factor."""
        with self._lock:
            if graded < self.min_graded or graded - self._checked_at < self.every:
                return self.factor
            self._checked_at = graded
            if diff_high < -self.tolerance:
                self.factor = max(self.min_factor, self.factor * (1 - self.step))
            elif diff_low > -self.tolerance:
                self.factor = min(1.0, self.factor / (1 - self.step))
            return self.factor
