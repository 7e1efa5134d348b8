"""Day one: a policy with no training data, that routes safely from the first request and learns as grades arrive.

``router-ml init --catalog my.toml`` registers a version whose VW model is empty and whose policy carries a
:class:`DayOnePrior`. The prior decides what is served until the evidence says otherwise:

* **The prior.** The *default* model (``--default``, else the catalog's dearest: the best-known model) is the
  *anchor*: it is served with probability ``1 - eps``. The rest, ``eps``, is the *exploration component*: half the
  learned router's own distribution ``r`` (SquareCB at the request's cost weight), half uniform over the models
  offered, so every model keeps being tried (an empty VW model scores the untried models below the default, and
  SquareCB alone would soon stop trying them) and the router's favourite is tried most. ``eps`` is the exploration
  share (``--explore-share``, default 0.1).
* **The caps.** ``eps`` is at most the exploration share on every request, and at most what keeps the exploration
  component's expected cost within the spend cap (``--explore-budget-usd-per-1k X``: ``eps * sum_m e(m) c(m) <= X``,
  with ``e`` the exploration component and ``c(m)`` the cost model's price of ``m`` on the prompt in USD per 1,000
  requests, corrected by the ratio of the costs observed so far to those it predicted). Both caps are properties of
  each request's distribution, so they hold under any load. The distribution sampled is exactly the one logged:
  propensities stay exact.
* **The conservative rule.** The router's greedy choice ``pi(x)`` takes the anchor's place (it gets ``1 - eps``,
  more than the exploration share) only when a one-sided lower confidence bound of its reward advantage over the
  default is above zero. The advantage is estimated on the graded decisions so far by doubly robust terms
  ``DR(pi(x)) - DR(default)``, ``DR(b) = r_hat(b) + 1[a = b] / p * (r - r_hat(b))``, with the logged propensity
  ``p``, the reward ``r = quality - lam * cost_per_1k`` at the policy's ``lam`` and a progressive, context-free
  baseline ``r_hat`` (each model's mean quality before this grade, the cost model's price): each term is unbiased
  given the past. It needs ``min_graded`` grades first. With a quality target (``--target quality:F`` or
  ``parity``) the router must also show ``quality(pi) - F * quality(default) > 0`` with the same confidence. Trust is
  withdrawn when the *upper* bound falls below zero (the router confidently worse): the anchor goes back to the
  default. Requests whose candidates leave the default out are anchored on the router's greedy choice.

Exploration spend is counted on the graded decisions: the cost of every call that went to a model other than the
anchor of the moment, per 1,000 graded requests, with its standard error (see :meth:`DayOnePrior.report`). The cap
bounds its expectation, so the realized figure may pass it by sampling noise alone.

The prior travels with the policy (its artifact's ``policy.json``), so online snapshots and warm starts keep both
the rule's state and what VW learned. Without sample prompts the features' cluster centroids are seeded random unit
vectors (:func:`spread_featurizer`): a fixed partition of the embedding sphere that needs no data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from router_ml.catalog import Catalog, CatalogError
from router_ml.errors import InvalidInput
from router_ml.features import FeatureConfig, Featurizer

Floats = npt.NDArray[np.float64]
DEFAULT_EXPLORE_SHARE = 0.1
DEFAULT_MIN_GRADED = 200
DEFAULT_CONFIDENCE = 0.95


def check_catalog(catalog: Catalog, default: str | None) -> str:
    """The default model of a day-one catalog (``default``, else the dearest); raises naming the field."""
    if len(catalog) < 2:
        raise CatalogError(
            f"catalog: field 'models' needs at least two models to route between, got one ('{catalog.names[0]}')"
        )
    if default is None:
        return max(catalog.models, key=lambda m: m.blended_usd_per_mtok).name
    if default not in catalog:
        raise InvalidInput(f"--default: model '{default}' is not in the catalog ({', '.join(catalog.names)})")
    return default


def spread_featurizer(dim: int, config: FeatureConfig) -> Featurizer:
    """Cluster centroids that need no data: seeded random unit vectors (nearest centroid = largest cosine)."""
    rng = np.random.default_rng(config.seed)
    centroids = []
    for k in config.clusters:
        c = rng.standard_normal((k, dim)).astype(np.float32)
        centroids.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    return Featurizer(config=config, dim=dim, centroids=centroids)


@dataclass
class _Welford:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def bounds(self, z: float) -> tuple[float, float]:
        if self.n < 2:
            return -math.inf, math.inf
        half = z * math.sqrt(self.m2 / (self.n - 1) / self.n)
        return self.mean - half, self.mean + half


@dataclass
class DayOnePrior:
    """The day-one prior, its caps and the conservative rule's running state (see the module docstring)."""

    default: str
    explore_share: float = DEFAULT_EXPLORE_SHARE
    explore_budget_usd_per_1k: float | None = None
    quality_target: float | None = None
    confidence: float = DEFAULT_CONFIDENCE
    min_graded: int = DEFAULT_MIN_GRADED
    trusted: bool = False
    graded: int = 0
    explored: int = 0
    explore_spend_usd: float = 0.0
    explore_spend_sq: float = 0.0
    q_sum: dict[str, float] = field(default_factory=dict)
    q_n: dict[str, int] = field(default_factory=dict)
    cost_seen: dict[str, float] = field(default_factory=dict)
    cost_predicted: dict[str, float] = field(default_factory=dict)
    advantage: _Welford = field(default_factory=_Welford)
    quality_margin: _Welford = field(default_factory=_Welford)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.explore_share) and 0.0 <= self.explore_share < 1.0):
            raise InvalidInput(f"--explore-share must lie in [0, 1), got {self.explore_share}")
        b = self.explore_budget_usd_per_1k
        if b is not None and not (math.isfinite(b) and b >= 0):
            raise InvalidInput(f"--explore-budget-usd-per-1k must be a number >= 0, got {b}")
        if not 0.5 <= self.confidence < 1:
            raise InvalidInput(f"--confidence must lie in [0.5, 1), got {self.confidence}")
        if self.min_graded < 2:
            raise InvalidInput(f"day one: 'min_graded' must be >= 2, got {self.min_graded}")

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(self.confidence)

    # -- serving ---------------------------------------------------------------------------------
    def correction(self, names: list[str]) -> Floats:
        """Per model (``names`` order): observed cost over the cost model's prediction so far (1 before any)."""
        out = np.ones(len(names), dtype=np.float64)
        for j, m in enumerate(names):
            predicted = self.cost_predicted.get(m, 0.0)
            if predicted > 0 and m in self.cost_seen:
                out[j] = self.cost_seen[m] / predicted
        return out

    def share(self, probs: Floats, cost_per_1k: Floats) -> float:
        """The exploration share of one request: the share cap, lowered to keep its expected spend within budget."""
        eps = self.explore_share
        if self.explore_budget_usd_per_1k is not None:
            expected = float(probs @ cost_per_1k)
            if expected > 0:
                eps = min(eps, self.explore_budget_usd_per_1k / expected)
        return eps

    def serve(self, probs: Floats, names: list[str], cost_per_1k: Floats, *, default_offered: bool) -> Floats:
        """The distribution actually sampled, ``(1 - eps) * anchor + eps * router``, from the router's ``probs``
        (catalog order, 0 for models not offered) and the cost model's prices of the prompt."""
        d = names.index(self.default)
        anchor = d if default_offered and not self.trusted else int(np.argmax(probs))
        offered = np.asarray(probs, dtype=np.float64) > 0
        offered[d] |= default_offered
        explore = 0.5 * np.asarray(probs, dtype=np.float64) + 0.5 * offered / max(int(offered.sum()), 1)
        eps = self.share(explore, cost_per_1k * self.correction(names))
        out = eps * explore
        out[anchor] += 1.0 - eps
        return out

    # -- learning ----------------------------------------------------------------------------------
    def _q_hat(self, model: str) -> float:
        if self.q_n.get(model):
            return self.q_sum[model] / self.q_n[model]
        total = sum(self.q_n.values())
        return sum(self.q_sum.values()) / total if total else 0.5

    def observe(
        self,
        names: list[str],
        chosen: int,
        greedy: int,
        propensity: float,
        quality: float,
        cost_usd: float,
        cost_per_1k: Floats,
        lam: float,
        *,
        default_offered: bool,
    ) -> None:
        """Count one graded decision: ``chosen`` (catalog index) was sampled with ``propensity``; ``greedy`` is the
        router's greedy choice on the prompt before this grade; ``cost_per_1k`` the cost model's prices."""
        model = names[chosen]
        anchor = names[greedy] if self.trusted or not default_offered else self.default
        self.graded += 1
        if model != anchor:
            self.explored += 1
            self.explore_spend_usd += cost_usd
            self.explore_spend_sq += cost_usd * cost_usd
        if default_offered:
            d = names.index(self.default)
            c_hat = cost_per_1k * self.correction(names)
            observed = cost_usd * 1000.0

            def dr(b: int, outcome: float, baseline: float) -> float:
                return baseline + ((outcome - baseline) / propensity if b == chosen else 0.0)

            def reward(b: int) -> float:
                return dr(b, quality - lam * observed, self._q_hat(names[b]) - lam * float(c_hat[b]))

            def qual(b: int) -> float:
                return dr(b, quality, self._q_hat(names[b]))

            self.advantage.add(reward(greedy) - reward(d) if greedy != d else 0.0)
            if self.quality_target is not None:
                self.quality_margin.add(qual(greedy) - self.quality_target * qual(d))
            self._decide()
        self.q_sum[model] = self.q_sum.get(model, 0.0) + quality
        self.q_n[model] = self.q_n.get(model, 0) + 1
        self.cost_seen[model] = self.cost_seen.get(model, 0.0) + cost_usd * 1000.0
        self.cost_predicted[model] = self.cost_predicted.get(model, 0.0) + float(cost_per_1k[chosen])

    def _decide(self) -> None:
        """The conservative rule: trust on a lower bound above zero, withdraw on an upper bound below it."""
        if self.advantage.n < self.min_graded:
            return
        low, high = self.advantage.bounds(self.z)
        q_low, q_high = self.quality_margin.bounds(self.z) if self.quality_target is not None else (0.0, 0.0)
        if not self.trusted and low > 0 and (self.quality_target is None or q_low > 0):
            self.trusted = True
        elif self.trusted and (high < 0 or (self.quality_target is not None and q_high < 0)):
            self.trusted = False

    # -- catalog changes, persistence, reports -----------------------------------------------------
    def for_catalog(self, catalog: Catalog) -> DayOnePrior:
        """The prior over another catalog: what it counted for the models that stay is kept; a catalog without the
        default starts the rule again against its dearest model."""
        keep = set(catalog.names)
        state = self.to_dict()
        for key in ("q_sum", "q_n", "cost_seen", "cost_predicted"):
            state[key] = {m: v for m, v in state[key].items() if m in keep}
        if self.default not in catalog:
            state |= {"default": check_catalog(catalog, None), "trusted": False, "advantage": {}, "quality_margin": {}}
        return DayOnePrior.from_dict(state)

    def copy(self) -> DayOnePrior:
        return DayOnePrior.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the artifact's ``policy.json`` keeps it under ``day_one``)."""
        return {
            "default": self.default,
            "explore_share": self.explore_share,
            "explore_budget_usd_per_1k": self.explore_budget_usd_per_1k,
            "quality_target": self.quality_target,
            "confidence": self.confidence,
            "min_graded": self.min_graded,
            "trusted": self.trusted,
            "graded": self.graded,
            "explored": self.explored,
            "explore_spend_usd": self.explore_spend_usd,
            "explore_spend_sq": self.explore_spend_sq,
            "q_sum": dict(self.q_sum),
            "q_n": dict(self.q_n),
            "cost_seen": dict(self.cost_seen),
            "cost_predicted": dict(self.cost_predicted),
            "advantage": vars(self.advantage).copy(),
            "quality_margin": vars(self.quality_margin).copy(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DayOnePrior:
        """Inverse of :meth:`to_dict`."""
        values = dict(raw)
        values["advantage"] = _Welford(**values.get("advantage", {}))
        values["quality_margin"] = _Welford(**values.get("quality_margin", {}))
        return cls(**values)

    def report(self) -> dict[str, Any]:
        """What ``GET /v1/savings`` shows under ``day_one``: the prior, the rule's state and the exploration spend."""
        low, high = self.advantage.bounds(self.z)
        n = max(self.graded, 1)
        mean = self.explore_spend_usd / n
        se = math.sqrt(max(self.explore_spend_sq / n - mean * mean, 0.0) / n)
        return {
            "default": self.default,
            "trusted": self.trusted,
            "explore_share_cap": self.explore_share,
            "explore_budget_usd_per_1k": self.explore_budget_usd_per_1k,
            "quality_target": self.quality_target,
            "confidence": self.confidence,
            "min_graded": self.min_graded,
            "graded": self.graded,
            "advantage": {
                "value": self.advantage.mean if self.advantage.n else None,
                "low": low if math.isfinite(low) else None,
                "high": high if math.isfinite(high) else None,
                "n": self.advantage.n,
            },
            "explored": self.explored,
            "explored_share": self.explored / n,
            "explore_spend_usd": self.explore_spend_usd,
            "explore_spend_per_1k": mean * 1000.0,
            "explore_spend_per_1k_se": se * 1000.0,
        }
