"""Counterfactual evaluation of a routing policy on logged traffic: what it would have scored, cost and saved.

The policy is evaluated as it would serve: its full exploring distribution on each logged prompt
(:meth:`Policy.predict_many`, restricted to the row's ``candidates``), and also its greedy
version (the argmax). Next to it the report puts the logging policy (its on-policy value: the mean
of the logged outcomes), every single catalog model (target = always that model, on the events
that offered it) and the *always-best* model: the single model with the highest estimated quality.

For every target it estimates quality, cost (USD per request) and reward (``quality - lam * 1000 *
cost_usd``) with IPS, SNIPS, DM and DR (:mod:`router_ml.estimators`) and 95% intervals. DR is the
headline. Its reward models are cross-fitted (:func:`router_ml.reward_model.cross_fit_predict`) on
the policy's own fitted :class:`Featurizer`, one for quality and one for cost; the clusters are not
refitted. DM is reported for completeness only: its interval treats the reward model as exact and
so ignores its bias; in the reward model's own checks DM intervals covered the truth about 5% of
the time.

**Savings.** The headline is the cost saved at equal or better quality versus the always-best
model: ``cost(best) - cost(policy)`` and ``quality(policy) - quality(best)``, by DR and SNIPS,
each with a *paired* interval (:func:`router_ml.estimators.paired_difference`: the CLT on per-event
differences of the two estimators' influence terms, on the events that offered the best model).
"Equal or better" is read honestly from the quality difference's interval: at least equal when its
lower bound is >= 0, worse when its upper bound is < 0, and otherwise "not worse by more than
``-low``". The best model is picked on the same events it is compared on, so its quality is
slightly flattered (winner's curse) and the savings claim is, if anything, conservative.

Assumptions: the logged propensities are right, and the logging policy gave every model the target
can pick a non-zero probability (support); only the logged model's propensity is recorded, so the
latter cannot be checked here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from router_ml.cost_model import estimate_tokens
from router_ml.errors import InvalidInput
from router_ml.estimators import (
    IPS,
    SNIPS,
    BanditFeedback,
    DirectMethod,
    DoublyRobust,
    Estimate,
    LinearEstimator,
    Linearization,
    paired_difference,
)
from router_ml.events import LoggedEvents
from router_ml.policy import Policy
from router_ml.reward import reward
from router_ml.reward_model import RewardModelConfig, cross_fit_predict

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

HEADLINE = "dr"
PAIRED = ("dr", "snips")
DM_NOTE = "DM's interval treats the reward model as exact, so it ignores the model's bias; do not read it as coverage"


def target_distribution(
    policy: Policy,
    embeddings: npt.NDArray[np.float32],
    candidates: Sequence[Sequence[str]],
    prompt_tokens: npt.ArrayLike,
    *,
    lam: float | None = None,
) -> Floats:
    """The policy's serving distribution per event, shape ``(n, len(catalog))``, each row over its candidates: its
    operating point, or the router alone at ``lam``."""
    tokens = np.asarray(prompt_tokens, dtype=np.float64)
    out = np.zeros((embeddings.shape[0], len(policy.catalog)), dtype=np.float64)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, cands in enumerate(candidates):
        groups.setdefault(tuple(cands), []).append(i)
    for cands, rows in groups.items():
        idx = np.array(rows, dtype=np.int64)
        out[idx] = policy.predict_many(embeddings[idx], list(cands), prompt_tokens=tokens[idx], lam=lam)
    total = out.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise InvalidInput(f"evaluate: the policy gave no probability to any candidate (row {int(np.argmin(total))})")
    normalised: Floats = out / total  # VW's float32 probabilities can miss 1 by ~1e-7
    return normalised


def greedy_distribution(distribution: Floats) -> Floats:
    """One-hot on each row's most likely action (ties: the first in catalog order)."""
    out = np.zeros_like(distribution)
    out[np.arange(distribution.shape[0]), distribution.argmax(axis=1)] = 1.0
    return out


@dataclass(frozen=True)
class TargetEstimates:
    """Quality, cost (USD per request) and reward of one target, keyed by estimator (``on_policy`` for logging)."""

    name: str
    kind: str
    n: int
    ess: float
    quality: dict[str, Estimate]
    cost_usd: dict[str, Estimate]
    reward: dict[str, Estimate]
    model: str | None = None

    def headline(self, outcome: str) -> Estimate:
        """The DR estimate of ``outcome`` (``quality``, ``cost_usd`` or ``reward``), or the on-policy mean."""
        found: dict[str, Estimate] = getattr(self, outcome)
        return found[HEADLINE] if HEADLINE in found else found["on_policy"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``cost_usd_per_1k`` repeats the cost per 1,000 requests."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "model": self.model, "n": self.n}
        out["ess"] = _num(self.ess)
        out["quality"] = _estimates(self.quality)
        out["cost_usd"] = _estimates(self.cost_usd)
        out["cost_usd_per_1k"] = _estimates(self.cost_usd, scale=1000.0)
        out["reward"] = _estimates(self.reward)
        return out


@dataclass(frozen=True)
class Savings:
    """A target against the always-best model on the same events: cost saved and quality difference, paired."""

    target: str
    baseline: str
    n: int
    level: float
    baseline_cost_usd: Estimate
    cost_saved_usd: dict[str, Estimate]
    quality_diff: dict[str, Estimate]
    reward_diff: dict[str, Estimate]

    @property
    def quality_at_least_equal(self) -> bool:
        """The DR quality difference's lower bound is >= 0."""
        return bool(self.quality_diff[HEADLINE].low >= 0.0)

    @property
    def quality_worse(self) -> bool:
        """The DR quality difference's upper bound is < 0."""
        return bool(self.quality_diff[HEADLINE].high < 0.0)

    @property
    def cost_saved_share(self) -> float:
        """DR cost saved as a share of the baseline's DR cost (NaN when that cost is 0)."""
        base = self.baseline_cost_usd.value
        return self.cost_saved_usd[HEADLINE].value / base if base > 0 else float("nan")

    def verdict(self) -> str:
        """A plain statement of the quality comparison at the interval's level."""
        q = self.quality_diff[HEADLINE]
        level = f"{self.level:.0%}"
        if self.quality_at_least_equal:
            return f"quality at least equal to {self.baseline} ({level} lower bound of the difference {q.low:+.4f})"
        if self.quality_worse:
            shown = f"{q.value:+.4f} [{q.low:+.4f}, {q.high:+.4f}]"
            return f"quality lower than {self.baseline} at {level} (difference {shown})"
        return (
            f"quality not significantly different from {self.baseline}; not worse by more than {-q.low:.4f} at {level}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "target": self.target,
            "baseline": self.baseline,
            "n": self.n,
            "cost_saved_usd": _estimates(self.cost_saved_usd),
            "cost_saved_usd_per_1k": _estimates(self.cost_saved_usd, scale=1000.0),
            "cost_saved_share": _num(self.cost_saved_share),
            "quality_diff": _estimates(self.quality_diff),
            "reward_diff": _estimates(self.reward_diff),
            "quality_at_least_equal": self.quality_at_least_equal,
            "quality_worse": self.quality_worse,
            "quality_shortfall_bound": _num(max(0.0, -self.quality_diff[HEADLINE].low)),
            "verdict": self.verdict(),
        }


@dataclass(frozen=True)
class Evaluation:
    """The whole counterfactual report of one policy on one set of logged events."""

    lam: float
    clip: float | None
    alpha: float
    folds: int
    n_events: int
    n_ungraded: int
    policy: TargetEstimates
    greedy: TargetEstimates
    logging: TargetEstimates
    singles: list[TargetEstimates]
    best_model: str
    savings: Savings
    greedy_savings: Savings
    logging_policies: list[str] = field(default_factory=list)

    @property
    def best_single(self) -> TargetEstimates:
        """The always-best model's estimates."""
        return next(s for s in self.singles if s.model == self.best_model)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (non-finite numbers become null)."""
        return {
            "lam": self.lam,
            "clip": self.clip,
            "alpha": self.alpha,
            "n_events": self.n_events,
            "n_ungraded": self.n_ungraded,
            "logging_policies": self.logging_policies,
            "headline_estimator": HEADLINE,
            "notes": {
                "units": "quality on [0, 1]; cost_usd is USD per request, cost_usd_per_1k per 1,000 requests",
                "reward": f"quality - {self.lam:g} * 1000 * cost_usd",
                "dm": DM_NOTE,
                "savings": "paired on the events that offered the best model: CLT on per-event influence differences",
                "reward_model": f"torch MLP on the policy's own features, cross-fitted over {self.folds} folds",
            },
            "best_model": self.best_model,
            "targets": {
                "policy": self.policy.to_dict(),
                "policy_greedy": self.greedy.to_dict(),
                "logging": self.logging.to_dict(),
                "best_single": self.best_single.to_dict(),
            },
            "singles": [s.to_dict() for s in self.singles],
            "savings": {"policy": self.savings.to_dict(), "policy_greedy": self.greedy_savings.to_dict()},
        }


@dataclass(frozen=True)
class GateDecision:
    """Whether a challenger's estimated reward clearly beats the current holder's, on the same logs and lam."""

    passed: bool
    challenger: Estimate
    holder: Estimate
    lam: float
    n_events: int


def gate(challenger: Evaluation, holder: Evaluation) -> GateDecision:
    """Passed when the challenger's DR reward lower bound is above the holder's DR reward estimate."""
    if challenger.lam != holder.lam or challenger.n_events != holder.n_events:
        raise InvalidInput(
            "evaluate: a promotion gate needs both policies evaluated on the same logs with"
            " the same lam"
        )
    mine, theirs = challenger.policy.reward[HEADLINE], holder.policy.reward[HEADLINE]
    return GateDecision(bool(mine.low > theirs.value), mine, theirs, challenger.lam, challenger.n_events)


def evaluate_policy(
    policy: Policy,
    events: LoggedEvents,
    embeddings: npt.NDArray[np.float32],
    *,
    lam: float | None = None,
    clip: float | None = None,
    alpha: float = 0.05,
    folds: int = 2,
    reward_model: RewardModelConfig | None = None,
) -> Evaluation:
    """Estimate ``policy`` (exploring and greedy), the logging policy and every single model on ``events``.

    ``embeddings`` are the events' prompt embeddings (the policy's embedder); ``lam`` defaults to
    the policy's own (its operating point is evaluated; with ``lam`` given, the router alone at that weight);
    ``clip`` caps the importance weights of IPS, SNIPS and DR.
    """
    if events.models != policy.catalog.names:
        raise InvalidInput("evaluate: the events must be mapped onto the policy's catalog (LoggedEvents.from_logs)")
    if embeddings.shape[0] != events.n:
        raise InvalidInput(f"evaluate: 'embeddings' has {embeddings.shape[0]} rows, the events {events.n}")
    decide_at = lam
    lam = policy.config.lam if lam is None else float(lam)
    if not (np.isfinite(lam) and lam >= 0):
        raise InvalidInput(f"evaluate: 'lam' must be a finite number >= 0, got {lam}")
    estimators = estimator_set(clip)  # checks 'clip' before any model is fitted
    k = len(policy.catalog)
    cfg = reward_model or RewardModelConfig()
    q_hat, c_hat = (
        cross_fit_predict(policy.featurizer, embeddings, events.actions, outcome, k, folds=folds, config=cfg)
        for outcome in (events.quality, events.cost_usd)
    )
    scorer = _Scorer(events, q_hat, c_hat, lam, estimators, alpha)

    tokens = [estimate_tokens(p) for p in events.prompts]
    exploring = target_distribution(policy, embeddings, events.candidates, tokens, lam=decide_at)
    greedy = greedy_distribution(exploring)
    everything = np.arange(events.n, dtype=np.int64)
    policy_est = scorer.target("policy (exploring)", "policy", exploring, everything)
    greedy_est = scorer.target("policy (greedy)", "greedy", greedy, everything)
    singles = []
    for j, model in enumerate(events.models):
        rows = np.flatnonzero(events.offered[:, j]).astype(np.int64)
        if rows.size:
            singles.append(scorer.target(f"always {model}", "single", _one_hot(events.n, k, j), rows, model))
    best = max(singles, key=lambda s: (s.quality[HEADLINE].value, -s.cost_usd[HEADLINE].value))
    assert best.model is not None
    best_j = events.models.index(best.model)
    best_rows = np.flatnonzero(events.offered[:, best_j]).astype(np.int64)
    best_target = _one_hot(events.n, k, best_j)
    return Evaluation(
        lam=lam,
        clip=clip,
        alpha=alpha,
        folds=folds,
        n_events=events.n,
        n_ungraded=events.n_ungraded,
        policy=policy_est,
        greedy=greedy_est,
        logging=scorer.logging(),
        singles=singles,
        best_model=best.model,
        savings=scorer.savings("policy (exploring)", exploring, best.model, best_target, best_rows),
        greedy_savings=scorer.savings("policy (greedy)", greedy, best.model, best_target, best_rows),
        logging_policies=events.logging_policies,
    )


def estimator_set(clip: float | None = None) -> dict[str, LinearEstimator]:
    """IPS, SNIPS, DM and DR keyed ``ips``, ``snips``, ``dm``, ``dr``; ``clip`` caps the weights of all but DM."""
    return {"ips": IPS(clip), "snips": SNIPS(clip), "dm": DirectMethod(), "dr": DoublyRobust(clip)}


class _Scorer:
    """Builds the three feedbacks (quality, cost, reward) of a target on some event rows and runs the estimators."""

    def __init__(
        self,
        events: LoggedEvents,
        q_hat: Floats,
        c_hat: Floats,
        lam: float,
        estimators: dict[str, LinearEstimator],
        alpha: float,
    ) -> None:
        self.events = events
        self.q_hat, self.c_hat, self.lam = q_hat, c_hat, lam
        self.estimators = estimators
        self.alpha = alpha

    def feedbacks(self, target: Floats, rows: Ints) -> dict[str, BanditFeedback]:
        e = self.events
        quality = BanditFeedback(e.actions[rows], e.quality[rows], e.propensities[rows], target[rows], self.q_hat[rows])
        cost = quality.with_outcome(e.cost_usd[rows], self.c_hat[rows])
        rewards = quality.with_outcome(
            reward(quality.rewards, cost.rewards, self.lam), reward(self.q_hat[rows], self.c_hat[rows], self.lam)
        )
        return {"quality": quality, "cost_usd": cost, "reward": rewards}

    def target(self, name: str, kind: str, target: Floats, rows: Ints, model: str | None = None) -> TargetEstimates:
        fbs = self.feedbacks(target, rows)
        found = {
            outcome: {key: est.estimate(fb, alpha=self.alpha) for key, est in self.estimators.items()}
            for outcome, fb in fbs.items()
        }
        ess = found["quality"][HEADLINE].ess
        return TargetEstimates(
            name, kind, int(rows.size), ess, found["quality"], found["cost_usd"], found["reward"], model
        )

    def logging(self) -> TargetEstimates:
        e = self.events
        outcomes = {"quality": e.quality, "cost_usd": e.cost_usd, "reward": reward(e.quality, e.cost_usd, self.lam)}
        found = {
            key: {"on_policy": Linearization.of_mean("on-policy", values, float(e.n)).estimate(self.alpha)}
            for key, values in outcomes.items()
        }
        return TargetEstimates(
            "logging (on-policy)", "logging", e.n, float(e.n), found["quality"], found["cost_usd"], found["reward"]
        )

    def savings(self, name: str, target: Floats, baseline: str, baseline_target: Floats, rows: Ints) -> Savings:
        mine, theirs = self.feedbacks(target, rows), self.feedbacks(baseline_target, rows)

        def diff(outcome: str, flip: bool) -> dict[str, Estimate]:
            first, second = (theirs, mine) if flip else (mine, theirs)
            return {
                key: paired_difference(self.estimators[key], first[outcome], second[outcome], alpha=self.alpha)
                for key in PAIRED
            }

        return Savings(
            target=name,
            baseline=baseline,
            n=int(rows.size),
            level=1.0 - self.alpha,
            baseline_cost_usd=self.estimators[HEADLINE].estimate(theirs["cost_usd"], alpha=self.alpha),
            cost_saved_usd=diff("cost_usd", flip=True),
            quality_diff=diff("quality", flip=False),
            reward_diff=diff("reward", flip=False),
        )


def _one_hot(n: int, k: int, j: int) -> Floats:
    out = np.zeros((n, k), dtype=np.float64)
    out[:, j] = 1.0
    return out


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _estimates(found: dict[str, Estimate], scale: float = 1.0) -> dict[str, dict[str, float | None]]:
    return {
        key: {"value": _num(e.value * scale), "low": _num(e.low * scale), "high": _num(e.high * scale)}
        for key, e in found.items()
    }
