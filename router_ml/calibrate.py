"""Calibrate a policy to a user's target on their own logged traffic, with bandit feedback only.

The logs hold one graded decision per row, with the probability it was taken with. To choose the operating point
that meets a :class:`~router_ml.operating.Target`:

1. The logged prompts go to ``folds`` folds by a hash of the prompt text (a prompt never sits in two folds).
   For each fold, a policy is learned on the other folds and its greedy choice on every held-out event is read at
   every ``lam`` of a sweep: out-of-sample decisions for the whole log.
2. Doubly robust estimates (:class:`~router_ml.estimators.DoublyRobust`, with a cross-fitted reward model of
   quality and of cost, :func:`~router_ml.reward_model.cross_fit_predict`) give each arm's mean quality and cost
   per request on the log's prompts: the router at every ``lam``, and every single model offered on every logged
   decision.
3. :func:`~router_ml.operating.choose` picks the cheapest point of the arms' upper hull that meets the target
   (parity or a share of the reference's quality; or the best quality within a budget). With ``confidence`` above
   0.5, a quality target is raised by ``z * se`` of the point's estimated shortfall (``z`` the one-sided normal
   quantile), so that it is met with that one-sided confidence rather than on the point estimate.
4. The chosen point, the reference model and their paired difference are reported with ``1 - alpha`` intervals:
   every estimate is linear in the target policy, so a mixture's terms are the mixture of its arms' terms.

The reference is the target's model, or else the model with the highest estimated quality. The policy that is then
served is learned on *all* the logs; its operating point is the one chosen here (:meth:`Policy.at`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from router_ml.cost_model import estimate_tokens
from router_ml.errors import InvalidInput
from router_ml.estimators import BanditFeedback, DoublyRobust, Estimate, Linearization
from router_ml.events import LoggedEvents
from router_ml.features import FeatureConfig, Featurizer
from router_ml.operating import Arm, ArmValue, OperatingPoint, Target, choose
from router_ml.policy import Policy
from router_ml.reward_model import RewardModelConfig, cross_fit_predict
from router_ml.split import hash_fraction

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
FitFold = Callable[[Ints], Policy]
"""Learns a policy on the given event rows (the calibration's folds call it once each)."""

DEFAULT_FOLDS = 3
DEFAULT_CONFIDENCE = 0.5
"""Quality targets are met on the point estimate unless a higher one-sided confidence is asked for."""
RELATIVE_LAMS: tuple[float, ...] = (0.0, *np.geomspace(1e-3, 10.0, 60).tolist())
"""The sweep, in units of ``1 / (the best single model's estimated cost per 1,000 requests)``."""


@dataclass(frozen=True)
class CalibrationReport:
    """What calibration chose, and its estimates on the logs (costs in USD per 1,000 requests)."""

    target: str
    reference: str
    point: OperatingPoint
    met: bool
    confident: bool
    confidence: float
    n_events: int
    folds: int
    level: float
    quality: Estimate
    cost_per_1k: Estimate
    reference_quality: Estimate
    reference_cost_per_1k: Estimate
    quality_diff: Estimate
    cost_diff_per_1k: Estimate

    @property
    def lam(self) -> float | None:
        """The router's ``lam`` when the point is the router alone."""
        return self.point.router_lam

    def verdict(self) -> str:
        """One plain sentence on whether the target is met."""
        pct = f"{self.level:.0%}"
        if not self.met:
            return (
                f"target {self.target} can NOT be met on these logs: the closest point is estimated at "
                f"{self.quality.value:.4f} quality and ${self.cost_per_1k.value:.3f} per 1k requests"
            )
        if self.confident:
            return f"target {self.target} is met with {pct} confidence"
        return f"target {self.target} is met on the estimate, but not with {pct} confidence (see the intervals)"

    def format(self) -> str:
        """The report as a few terminal lines."""

        def est(e: Estimate, spec: str) -> str:
            return f"{format(e.value, spec)} [{format(e.low, spec)}, {format(e.high, spec)}]"

        return "\n".join(
            [
                f"calibrated to {self.target} against {self.reference} on {self.n_events} logged events "
                f"({self.folds} folds, doubly robust, {self.level:.0%} intervals)",
                f"  operating point:  {self.point.label}",
                f"  router quality:   {est(self.quality, '.4f')}   cost per 1k: ${est(self.cost_per_1k, '.4f')}",
                f"  {self.reference + ':':<16}  {est(self.reference_quality, '.4f')}"
                f"   cost per 1k: ${est(self.reference_cost_per_1k, '.4f')}",
                f"  router - ref:     quality {est(self.quality_diff, '+.4f')}"
                f"   cost per 1k {est(self.cost_diff_per_1k, '+.4f')}",
                f"  {self.verdict()}",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""

        def est(e: Estimate) -> dict[str, float]:
            return {"value": e.value, "low": e.low, "high": e.high}

        return {
            "target": self.target,
            "reference": self.reference,
            "point": self.point.to_dict(),
            "lam": self.lam,
            "met": self.met,
            "confident": self.confident,
            "confidence": self.confidence,
            "verdict": self.verdict(),
            "n_events": self.n_events,
            "folds": self.folds,
            "level": self.level,
            "quality": est(self.quality),
            "cost_per_1k": est(self.cost_per_1k),
            "reference_quality": est(self.reference_quality),
            "reference_cost_per_1k": est(self.reference_cost_per_1k),
            "quality_diff": est(self.quality_diff),
            "cost_diff_per_1k": est(self.cost_diff_per_1k),
        }

    def metrics(self) -> dict[str, float]:
        """Flat figures for an MLflow run."""
        out: dict[str, float] = {}
        for name in ("quality", "cost_per_1k", "reference_quality", "reference_cost_per_1k", "quality_diff"):
            e: Estimate = getattr(self, name)
            out |= {f"calibrated_{name}": e.value, f"calibrated_{name}_low": e.low, f"calibrated_{name}_high": e.high}
        return out


def prompt_folds(prompts: Sequence[str], folds: int, salt: str = "calibrate") -> Ints:
    """A fold per event by a hash of its prompt text: repeats of one prompt share a fold."""
    if folds < 2:
        raise InvalidInput(f"calibrate: 'folds' must be >= 2, got {folds}")
    return np.array([int(hash_fraction(p, salt) * folds) for p in prompts], dtype=np.int64)


def out_of_fold_choices(
    events: LoggedEvents,
    embeddings: npt.NDArray[np.float32],
    fit: FitFold,
    lams: Sequence[float],
    fold: Ints,
) -> Ints:
    """Greedy choices ``(len(lams), n)``: each event's by the policy learned on the other folds."""
    out = np.zeros((len(lams), events.n), dtype=np.int64)
    tokens = np.array([estimate_tokens(p) for p in events.prompts], dtype=np.float64)
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        if held.size == events.n:
            raise InvalidInput("calibrate: every event fell in one fold; the logs need more distinct prompts")
        policy = fit(np.flatnonzero(fold != f).astype(np.int64))
        groups: dict[tuple[str, ...], list[int]] = {}
        for i in held:
            groups.setdefault(events.candidates[i], []).append(int(i))
        for cands, rows in groups.items():
            idx = np.array(rows, dtype=np.int64)
            out[:, idx] = policy.greedy_choices(embeddings[idx], lams, list(cands), prompt_tokens=tokens[idx])
    return out


class _Arms:
    """DR linearizations of quality and cost (USD per 1k) for targets on the logged events."""

    def __init__(self, events: LoggedEvents, q_hat: Floats, c_hat: Floats) -> None:
        self.events, self.q_hat, self.c_hat = events, q_hat, c_hat
        self._dr = DoublyRobust()

    def of(self, target: Floats) -> tuple[Linearization, Linearization]:
        e = self.events
        quality = BanditFeedback(e.actions, e.quality, e.propensities, target, self.q_hat)
        cost = quality.with_outcome(e.cost_usd * 1000.0, self.c_hat * 1000.0)
        return self._dr.linearize(quality), self._dr.linearize(cost)

    def one_hot(self, choices: Ints) -> Floats:
        out = np.zeros((self.events.n, len(self.events.models)), dtype=np.float64)
        out[np.arange(self.events.n), choices] = 1.0
        return out


class Calibrator:
    """The expensive part of calibration, done once per logs: the reward models, every single model's estimates, and
    the out-of-fold choices of the router at every ``lam``. :meth:`report` then meets any number of targets."""

    def __init__(
        self,
        events: LoggedEvents,
        embeddings: npt.NDArray[np.float32],
        fit: FitFold,
        *,
        folds: int = DEFAULT_FOLDS,
        relative_lams: Sequence[float] = RELATIVE_LAMS,
        reward_model: RewardModelConfig | None = None,
    ) -> None:
        if embeddings.shape[0] != events.n:
            raise InvalidInput(f"calibrate: 'embeddings' has {embeddings.shape[0]} rows, the events {events.n}")
        k = len(events.models)
        self.events, self.folds = events, folds
        self.always = [j for j in range(k) if events.offered[:, j].all()]
        if not self.always:
            raise InvalidInput("calibrate: no model was offered on every logged decision, so none can be the reference")
        featurizer = Featurizer.fit(embeddings, FeatureConfig())
        cfg = reward_model or RewardModelConfig()
        q_hat, c_hat = (
            cross_fit_predict(featurizer, embeddings, events.actions, outcome, k, folds=2, config=cfg)
            for outcome in (events.quality, events.cost_usd)
        )
        arms = _Arms(events, q_hat, c_hat)
        self.singles = {Arm(model=events.models[j]): arms.of(arms.one_hot(np.full(events.n, j))) for j in self.always}
        self.best = max(self.singles, key=lambda a: (self.singles[a][0].value, -self.singles[a][1].value))
        scale = self.singles[self.best][1].value
        lams = [x / (scale if scale > 0 else 1.0) for x in relative_lams]
        choices = out_of_fold_choices(events, embeddings, fit, lams, prompt_folds(events.prompts, folds))
        routers = {Arm(lam=lam): arms.of(arms.one_hot(choices[i])) for i, lam in enumerate(lams)}
        self.linear = {**self.singles, **routers}
        self.values = [ArmValue(a, q.value, c.value) for a, (q, c) in self.linear.items()]

    def estimates(self, point: OperatingPoint) -> tuple[Linearization, Linearization]:
        """DR linearizations of the point's quality and cost (USD per 1k): its arms', mixed by its weights."""
        parts = list(zip(point.weights, point.arms))
        q = Linearization.combine("dr", [(w, self.linear[a][0]) for w, a in parts])
        c = Linearization.combine("dr", [(w, self.linear[a][1]) for w, a in parts])
        return q, c

    def report(
        self, target: Target, *, confidence: float = DEFAULT_CONFIDENCE, alpha: float = 0.05
    ) -> CalibrationReport:
        """The operating point that meets ``target`` (see the module docstring), with its estimates."""
        if not 0.5 <= confidence < 1.0:
            raise InvalidInput(f"calibrate: 'confidence' must lie in [0.5, 1), got {confidence}")
        models = self.events.models
        if target.reference is not None and target.reference not in models:
            raise InvalidInput(f"calibrate: the target's reference model {target.reference!r} is not in the catalog")
        if target.reference is not None and models.index(target.reference) not in self.always:
            raise InvalidInput(
                f"calibrate: reference model {target.reference!r} was not offered on every logged decision"
            )
        ref_arm = Arm(model=target.reference) if target.reference is not None else self.best
        ref_q, ref_c = self.singles[ref_arm]
        goal = target.goal(ref_q.value, ref_c.value)
        chosen = choose(self.values, target.kind, goal)
        z = NormalDist().inv_cdf(confidence)
        if target.kind == "quality" and z > 0:
            for _ in range(3):  # the margin depends on the point; a few fixed-point steps settle it
                q, _c = self.estimates(chosen.point)
                gap = Linearization.combine("dr", [(1.0, q), (-target.value, ref_q)])
                se = float(gap.influence.std(ddof=1)) / np.sqrt(gap.n)
                raised = choose(self.values, target.kind, goal + z * se)
                if raised.point == chosen.point:
                    break
                chosen = raised
            chosen = chosen if chosen.met else choose(self.values, target.kind, goal)
        q, c = self.estimates(chosen.point)
        if target.kind == "quality":
            shortfall = Linearization.combine("dr", [(1.0, q), (-target.value, ref_q)]).estimate(alpha)
            confident = chosen.met and shortfall.low >= 0
        else:
            confident = chosen.met and c.estimate(alpha).high <= goal
        return CalibrationReport(
            target=target.label,
            reference=ref_arm.model or "",
            point=chosen.point,
            met=chosen.met,
            confident=confident,
            confidence=confidence,
            n_events=self.events.n,
            folds=self.folds,
            level=1.0 - alpha,
            quality=q.estimate(alpha),
            cost_per_1k=c.estimate(alpha),
            reference_quality=ref_q.estimate(alpha),
            reference_cost_per_1k=ref_c.estimate(alpha),
            quality_diff=Linearization.combine("dr difference", [(1.0, q), (-1.0, ref_q)]).estimate(alpha),
            cost_diff_per_1k=Linearization.combine("dr difference", [(1.0, c), (-1.0, ref_c)]).estimate(alpha),
        )


def calibrate(
    events: LoggedEvents,
    embeddings: npt.NDArray[np.float32],
    fit: FitFold,
    target: Target,
    *,
    folds: int = DEFAULT_FOLDS,
    relative_lams: Sequence[float] = RELATIVE_LAMS,
    confidence: float = DEFAULT_CONFIDENCE,
    alpha: float = 0.05,
    reward_model: RewardModelConfig | None = None,
) -> CalibrationReport:
    """Choose the operating point that meets ``target`` on ``events`` (see the module docstring)."""
    calibrator = Calibrator(
        events, embeddings, fit, folds=folds, relative_lams=relative_lams, reward_model=reward_model
    )
    return calibrator.report(target, confidence=confidence, alpha=alpha)
