"""What the router is saving on live traffic: a running doubly robust estimate against a reference model.

The service logs every decision with the probability it was sampled with, and learns from the grades that come
back. From those graded decisions alone, :class:`LiveSavings` keeps, per request:

* the router's own quality and cost: the logged outcomes themselves (the router served them, exploring);
* the reference model's (``always ref``), by doubly robust terms
  ``q_hat(ref) + 1[a = ref] / p * (q - q_hat(ref))`` and the same for cost, where ``p`` is the logged propensity;
* their paired differences, router minus reference, term by term.

``q_hat(ref)`` is the mean quality of the reference's graded decisions *before* this one (before the first, the mean of
every earlier grade; before any, 0.5): a progressive, context-free reward model that never sees the event it
corrects, so each term is unbiased given the past. ``c_hat(ref)`` is the cost model's price for the reference on the
prompt. Each figure is a running mean with a 95% interval from the
terms' running variance (the CLT, like :mod:`router_ml.estimators`). Decisions whose candidates left the reference
out say nothing about it and are skipped; the estimate is only as good as the logged propensities, and it needs
the router to explore the reference now and then (SquareCB does).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from router_ml.errors import InvalidInput
from router_ml.estimators import Estimate


@dataclass
class _Running:
    """Welford's running mean and variance."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def estimate(self, method: str, z: float) -> Estimate:
        """The running mean with its interval (unbounded below two observations)."""
        half = z * math.sqrt(self.m2 / (self.n - 1) / self.n) if self.n >= 2 else math.inf
        return Estimate(method, self.mean, self.mean - half, self.mean + half, float(self.n), self.n)


def _bounded(e: Estimate) -> dict[str, float | None]:
    """JSON-ready value and interval (unbounded ends as ``None``)."""
    return {k: (v if math.isfinite(v) else None) for k, v in (("value", e.value), ("low", e.low), ("high", e.high))}


@dataclass(frozen=True)
class SavingsReport:
    """The router against the reference on the graded decisions so far (costs in USD per 1,000 requests)."""

    reference: str
    n: int
    level: float
    router_quality: Estimate
    reference_quality: Estimate
    quality_diff: Estimate
    router_cost_per_1k: Estimate
    reference_cost_per_1k: Estimate
    saved_per_1k: Estimate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        figures = (
            "router_quality",
            "reference_quality",
            "quality_diff",
            "router_cost_per_1k",
            "reference_cost_per_1k",
            "saved_per_1k",
        )
        return {
            "reference": self.reference,
            "graded_decisions": self.n,
            "level": self.level,
            **{name: _bounded(getattr(self, name)) for name in figures},
        }


@dataclass
class LiveSavings:
    """A running doubly robust comparison of the router with ``reference`` (see the module docstring).

    Thread-safe: grades arrive on the policy thread, reports are read by request handlers.
    """

    reference: str
    alpha: float = 0.05
    _ref_sum: float = 0.0
    _ref_n: int = 0
    _all_sum: float = 0.0
    _acc: dict[str, _Running] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise InvalidInput(f"savings: 'alpha' must lie in (0, 1), got {self.alpha}")
        self._acc = {k: _Running() for k in ("q", "q_ref", "q_diff", "c", "c_ref", "c_saved")}

    def observe(
        self,
        model: str,
        propensity: float,
        quality: float,
        cost_usd: float,
        *,
        reference_offered: bool,
        reference_cost_per_1k: float,
    ) -> None:
        """Count one graded decision: ``model`` was sampled with ``propensity``; the reference's expected cost on
        this prompt is ``reference_cost_per_1k``."""
        if not (0 < propensity <= 1 and 0 <= quality <= 1 and math.isfinite(cost_usd) and cost_usd >= 0):
            raise InvalidInput("savings: a graded decision needs propensity in (0, 1], quality in [0, 1], cost >= 0")
        if not reference_offered:
            return
        with self._lock:
            seen = self._acc["q"].n
            q_hat = self._ref_sum / self._ref_n if self._ref_n else (self._all_sum / seen if seen else 0.5)
            chosen = model == self.reference
            q_ref = q_hat + (quality - q_hat) / propensity if chosen else q_hat
            cost = cost_usd * 1000.0
            c_ref = (
                reference_cost_per_1k + (cost - reference_cost_per_1k) / propensity
                if chosen
                else (reference_cost_per_1k)
            )
            for key, value in (
                ("q", quality),
                ("q_ref", q_ref),
                ("q_diff", quality - q_ref),
                ("c", cost),
                ("c_ref", c_ref),
                ("c_saved", c_ref - cost),
            ):
                self._acc[key].add(value)
            self._all_sum += quality
            if chosen:
                self._ref_sum += quality
                self._ref_n += 1

    def report(self) -> SavingsReport:
        """The estimates so far, with ``1 - alpha`` intervals."""
        z = NormalDist().inv_cdf(1 - self.alpha / 2)
        with self._lock:
            figs = {k: acc.estimate("on-policy" if k in ("q", "c") else "dr", z) for k, acc in self._acc.items()}
            n = self._acc["q"].n
        return SavingsReport(
            reference=self.reference,
            n=n,
            level=1 - self.alpha,
            router_quality=figs["q"],
            reference_quality=figs["q_ref"],
            quality_diff=figs["q_diff"],
            router_cost_per_1k=figs["c"],
            reference_cost_per_1k=figs["c_ref"],
            saved_per_1k=figs["c_saved"],
        )
