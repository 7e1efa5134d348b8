"""The routing policy: a Vowpal Wabbit ``--cb_explore_adf`` model with one action per catalog model.

Reward is ``quality - lam * cost_per_1k`` where ``cost_per_1k`` is the call's cost in USD per 1,000
requests. So ``lam`` reads as *how much quality (on the 0-1 scale) you would give up to save one
dollar per thousand requests*: with ``lam = 0.05``, paying $2 more per 1,000 requests must buy at
least 0.1 more quality.

VW learns *quality* (it minimises cost, so it is fed ``-quality``); each model's cost on a prompt is
priced by the policy's :class:`~router_ml.cost_model.CostModel`, and ``lam`` is applied when deciding:
SquareCB's distribution over the quality estimates is re-priced exactly for the reward at ``lam``
(:func:`router_ml.budget.retarget`). One learned model therefore serves every ``lam``, and its greedy
choice moves monotonically to cheaper models as ``lam`` grows. The policy serves an
:class:`~router_ml.operating.OperatingPoint`: the router at its ``lam``, or a calibrated mixture of
two arms (:mod:`router_ml.operating`).

Like river's estimators the policy has ``predict_one`` and ``learn_one``; the model itself is plain
bytes (:meth:`Policy.model_bytes`), and :mod:`router_ml.artifacts` stores it with its catalog and
features.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import vowpal_wabbit_next as vw

from router_ml.bounded import ByteLRU
from router_ml.budget import retarget, score_gaps
from router_ml.catalog import Catalog
from router_ml.cost_model import CostModel
from router_ml.day_one import DayOnePrior
from router_ml.errors import InvalidInput
from router_ml.features import Context, FeatureGroup, Featurizer, action_features
from router_ml.operating import Arm, OperatingPoint
from router_ml.reward import reward
from router_ml.sampling import draw

Exploration = Literal["squarecb", "epsilon"]
Learns = Literal["quality", "reward"]
Floats = Sequence[float] | npt.NDArray[np.float64]
Probs = npt.NDArray[np.float64]
_NO_LABEL = vw.CBLabel()
_SHARED = vw.CBLabel(shared=True)
SHARED_CACHE_BYTES = 256 << 20
"""Bound of a policy's cache of VW shared examples (:attr:`Policy.shared_cache`): about 8,700 examples, each held at
~30 KB however few features it has (measured, vowpal-wabbit-next 0.7), so the online loop builds each prompt's once."""
_VW_EXAMPLE_BYTES = 30 << 10
CANDIDATE_CACHE_BYTES = 4 << 20
"""Bound of each per-candidate-list cache (offered actions, their VW examples): clients may send any list."""


def _list_bytes(key: tuple[Any, ...] | None, value: list[Any]) -> int:
    """A candidate-list cache entry: the key tuple and its strings, and the list (its items are shared)."""
    strings = sum(sys.getsizeof(k) for k in key or () if isinstance(k, str))
    return sys.getsizeof(key) + strings + sys.getsizeof(value)


def _shared_bytes(key: int, value: tuple[Context, Any]) -> int:
    """A shared-example cache entry: the VW example, and the context's feature arrays (held twice)."""
    return _VW_EXAMPLE_BYTES + 2 * sum(idx.nbytes + val.nbytes for idx, val in value[0].values())


def _action_probs(prediction: object) -> list[tuple[int, float]]:
    """VW's ``cb_explore_adf`` prediction: (position among the offered actions, probability), sorted by probability."""
    return cast(list[tuple[int, float]], prediction)


@dataclass(frozen=True)
class PolicyConfig:
    """Learner settings. ``lam`` is quality per USD per 1,000 requests (see the module docstring).

    ``max_weight`` caps the importance weight ``1 / propensity`` VW gives each update. VW's MTR
    reduction (the one SquareCB runs on) regresses the chosen action's reward with weight ``1/p``;
    once SquareCB is nearly greedy, an explored model picked with ``p = 0.001`` gets a 1000x update
    that swings its estimate. The default cap of 1 makes every update plain regression, the oracle
    SquareCB's analysis assumes; ``None`` restores full importance weighting (e.g. to correct for a
    skewed logging policy under a misspecified model). Chosen on a validation split inside TRAIN of
    the shared benchmark: over three runs the capped policy reached gpt-4o's quality at 13-21% of
    its cost, against 15-26% (or never) uncapped, and 97.5% of it at 7-8% (uncapped 7-20%).
    """

    lam: float = 0.05
    exploration: Exploration = "squarecb"
    learns: Learns | None = None
    epsilon: float = 0.05
    gamma_scale: float = 100.0
    learning_rate: float = 0.5
    power_t: float = 0.5
    max_weight: float | None = 1.0
    bits: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not np.isfinite(self.lam) or self.lam < 0:
            raise InvalidInput(f"policy: 'lam' must be a finite number >= 0, got {self.lam}")
        if self.exploration not in ("squarecb", "epsilon"):
            raise InvalidInput(f"policy: 'exploration' must be 'squarecb' or 'epsilon', got {self.exploration!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise InvalidInput(f"policy: 'epsilon' must lie in [0, 1], got {self.epsilon}")
        if self.max_weight is not None and self.max_weight < 1:
            raise InvalidInput(f"policy: 'max_weight' must be >= 1 (or unset), got {self.max_weight}")
        if self.power_t < 0:
            raise InvalidInput(f"policy: 'power_t' must be >= 0, got {self.power_t}")
        if self.gamma_scale <= 0 or self.learning_rate <= 0:
            raise InvalidInput("policy: 'gamma_scale' and 'learning_rate' must be > 0")
        if not 10 <= self.bits <= 28:
            raise InvalidInput(f"policy: 'bits' must lie in [10, 28], got {self.bits}")
        if self.learns is None:
            object.__setattr__(self, "learns", "quality" if self.exploration == "squarecb" else "reward")
        if self.learns not in ("quality", "reward"):
            raise InvalidInput(f"policy: 'learns' must be 'quality' or 'reward', got {self.learns!r}")
        if self.learns == "quality" and self.exploration != "squarecb":
            raise InvalidInput("policy: only squarecb can be re-priced for lam, so epsilon exploration learns 'reward'")

    @property
    def learned_lam(self) -> float:
        """The cost weight inside what VW regresses: 0 when it learns quality (the default), ``lam`` when it learns
        the reward itself (epsilon-greedy, and policies trained before quality learning)."""
        return 0.0 if self.learns == "quality" else self.lam

    def vw_cost(self, quality: float, cost_usd: float) -> float:
        """What VW regresses for one outcome (it minimises): minus the reward at ``learned_lam``."""
        return -reward(quality, cost_usd, self.learned_lam)

    def vw_args(self, interactions: Sequence[str]) -> list[str]:
        """The VW command line for these settings."""
        args = ["--cb_explore_adf", "--quiet", "-b", str(self.bits)]
        args += ["-l", str(self.learning_rate), "--power_t", str(self.power_t)]
        args += ["--random_seed", str(self.seed)]
        if self.exploration == "squarecb":
            args += ["--squarecb", "--gamma_scale", str(self.gamma_scale)]
        else:
            args += ["--epsilon", str(self.epsilon)]
        for pair in interactions:
            args += ["-q", pair]
        return args

    def to_json(self) -> str:
        """JSON form, for artifacts and MLflow params."""
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Decision:
    """One routing decision: the chosen model, the probability it was chosen with, and the full distribution."""

    model: str
    probability: float
    distribution: dict[str, float]

    def ranking(self) -> list[str]:
        """Models with non-zero probability, most likely first (for fallback)."""
        return [m for m, p in sorted(self.distribution.items(), key=lambda kv: -kv[1]) if p > 0]


class Policy:
    """A contextual-bandit router over a :class:`Catalog`.

    One writer at a time: the VW workspace and the cached action examples are not thread-safe, so a
    service gives the policy a single owner and queues predictions and updates to it.

    ``prompt_tokens`` (the prompt's length in tokens, :func:`~router_ml.cost_model.estimate_tokens`) prices each
    model for the prompt; ``lam`` overrides the operating point with the router alone at that cost weight.
    """

    def __init__(
        self,
        catalog: Catalog,
        featurizer: Featurizer,
        config: PolicyConfig,
        *,
        model_bytes: bytes | None = None,
        costs: CostModel | None = None,
        operating: OperatingPoint | None = None,
        prior: DayOnePrior | None = None,
    ) -> None:
        self.catalog = catalog
        self.prior = prior
        """A day-one prior (:mod:`router_ml.day_one`): what is served until the evidence moves traffic away from its
        default, and the caps on exploration. None for a policy trained on logs."""
        self.featurizer = featurizer
        self.config = config
        self.costs = costs if costs is not None else CostModel.for_catalog(catalog)
        self.operating = operating if operating is not None else OperatingPoint.router(config.lam)
        args = config.vw_args(featurizer.config.interactions)
        self._ws = vw.Workspace(args, model_data=model_bytes) if model_bytes else vw.Workspace(args)
        self._actions = action_features(catalog.names, [m.blended_usd_per_mtok for m in catalog.models])
        # Action examples never change, so they are built once; VW restores them after every call
        # (shared features are merged in and taken out again), and only their labels are reset.
        self._action_examples = [self._example(a, _NO_LABEL) for a in self._actions]
        self.updates = 0
        self._offered: ByteLRU[tuple[str, ...] | None, list[int]] = ByteLRU(CANDIDATE_CACHE_BYTES, _list_bytes)
        self._cores: ByteLRU[tuple[int, ...], list[Any]] = ByteLRU(CANDIDATE_CACHE_BYTES, _list_bytes)
        # VW shared examples by context object: the online loop serves each prompt about 12 times, and
        # decide then learn on one context reuse one example. The context is kept so its id stays unique.
        # A caller that never reuses a context (the service) sets its max_bytes to 0.
        self.shared_cache: ByteLRU[int, tuple[Context, Any]] = ByteLRU(SHARED_CACHE_BYTES, _shared_bytes)

    # -- examples -------------------------------------------------------------------------------
    @staticmethod
    def _example(groups: dict[str, FeatureGroup], label: vw.CBLabel) -> vw.Example:
        ex = vw.Example()
        for ns, (idx, val) in groups.items():
            ex[ns].push_many_features(idx, val)  # type: ignore[arg-type]  # vw-next's stub mistypes ndarray
        ex.set_label(label)
        return ex

    def _run(
        self, shared: Context, actions: list[int], learn: tuple[int, float, float] | None = None
    ) -> list[tuple[int, float]]:
        """Predict (or predict-then-learn, with ``(chosen position, VW cost, propensity)``) on one context.

        The cached action examples carry no label except, during a learn call, the chosen one. The calls
        go to vw-next's core directly: its Python wrapper re-checks the label type of all 32 examples on
        every call, which cost more than VW's own work here (vowpal-wabbit-next is pinned for this reason).
        """
        cached = self.shared_cache.get(id(shared))
        if cached is None or cached[0] is not shared:
            cached = (shared, self._example(shared, _SHARED)._example)
            self.shared_cache.put(id(shared), cached)
        key = tuple(actions)
        offered = self._cores.get(key)
        if offered is None:
            offered = [self._action_examples[a]._example for a in actions]
            self._cores.put(key, offered)
        cores = [cached[1], *offered]
        if learn is None:
            return _action_probs(self._ws._workspace.predict_multi_ex_one(cores))
        pos, vw_cost, propensity = learn
        labelled = self._action_examples[actions[pos]]
        labelled.set_label(vw.CBLabel(label=(vw_cost, propensity)))
        try:
            return _action_probs(self._ws._workspace.predict_then_learn_multi_ex_one(cores))
        finally:
            labelled.set_label(_NO_LABEL)

    def _candidate_indices(self, candidates: Sequence[str] | None) -> list[int]:
        key = tuple(candidates) if candidates is not None else None
        found = self._offered.get(key)
        if found is None:
            if key is None:
                found = list(range(len(self.catalog)))
            elif not key:
                raise InvalidInput("policy: 'candidates' must name at least one model")
            else:
                self.catalog.require(key, "policy: 'candidates'")
                found = [self.catalog.index(c) for c in dict.fromkeys(key)]
            self._offered.put(key, found)
        return found

    def _learned(self, context: Context, actions: list[int]) -> npt.NDArray[np.float64]:
        """VW's own distribution (SquareCB over what it learned) in catalog order, 0 outside ``actions``."""
        out = np.zeros(len(self.catalog), dtype=np.float64)
        for pos, prob in self._run(context, actions):
            out[actions[pos]] = prob
        return out

    def _priced(self, learned: npt.NDArray[np.float64], lam: float, prompt_tokens: float) -> npt.NDArray[np.float64]:
        """Re-price VW's distribution for the reward at ``lam`` on a prompt of ``prompt_tokens`` tokens."""
        if not (np.isfinite(lam) and lam >= 0):
            raise InvalidInput(f"policy: 'lambda' must be a finite number >= 0, got {lam}")
        shift = lam - self.config.learned_lam
        if shift == 0:
            return learned
        return retarget(learned, self.gamma, shift * self.costs.per_1k(prompt_tokens))

    def _arm(self, arm: Arm, learned: npt.NDArray[np.float64], actions: list[int], tokens: float) -> Probs:
        if arm.model is not None and self.catalog.index(arm.model) in actions:
            out = np.zeros(len(self.catalog), dtype=np.float64)
            out[self.catalog.index(arm.model)] = 1.0
            return out
        # a fixed model that is not offered gives way to the router at the policy's own lam
        return self._priced(learned, arm.lam if arm.lam is not None else self.config.lam, tokens)

    # -- predict / learn ------------------------------------------------------------------------
    def distribution(
        self,
        context: Context,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float = 1.0,
        lam: float | None = None,
        point: OperatingPoint | None = None,
    ) -> Probs:
        """The action distribution for one precomputed context (:meth:`Featurizer.shared`), in catalog order, with
        0 for models outside ``candidates``: the router alone at ``lam`` if given, else ``point``'s mixture (by
        default the policy's own operating point)."""
        actions = self._candidate_indices(candidates)
        learned = self._learned(context, actions)
        if lam is not None:
            return self._guarded(self._priced(learned, lam, prompt_tokens), actions, prompt_tokens)
        point = point or self.operating
        if len(point.arms) == 1:
            return self._guarded(self._arm(point.arms[0], learned, actions, prompt_tokens), actions, prompt_tokens)
        parts = [w * self._arm(a, learned, actions, prompt_tokens) for a, w in zip(point.arms, point.weights)]
        return self._guarded(np.asarray(parts[0] + parts[1], dtype=np.float64), actions, prompt_tokens)

    def _guarded(self, probs: Probs, actions: list[int], prompt_tokens: float) -> Probs:
        """The distribution served: the day-one prior's mixture of ``probs`` when the policy has one."""
        if self.prior is None:
            return probs
        offered = self.catalog.index(self.prior.default) in actions
        return self.prior.serve(probs, self.catalog.names, self.costs.per_1k(prompt_tokens), default_offered=offered)

    def predict_many(
        self,
        embeddings: npt.NDArray[np.float32],
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: npt.ArrayLike,
        lam: float | None = None,
    ) -> Probs:
        """Action distributions, shape ``(n, len(catalog))`` in catalog order; non-candidates get 0.
        ``prompt_tokens`` has one length per row."""
        tokens = np.broadcast_to(np.asarray(prompt_tokens, dtype=np.float64), (embeddings.shape[0],))
        rows = [
            self.distribution(ctx, candidates, prompt_tokens=float(t), lam=lam)
            for ctx, t in zip(self.featurizer.shared(embeddings), tokens)
        ]
        return np.stack(rows) if rows else np.zeros((0, len(self.catalog)), dtype=np.float64)

    def greedy_choices(
        self,
        embeddings: npt.NDArray[np.float32],
        lams: Sequence[float],
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: npt.ArrayLike,
    ) -> npt.NDArray[np.int64]:
        """The router's most likely model (catalog index) per row at each of ``lams``: shape ``(len(lams), n)``.

        VW's distribution is computed once per row and inverted to the learned reward gaps
        (:func:`router_ml.budget.score_gaps`); at each ``lam`` the greedy choice is the smallest gap plus
        ``(lam - learned_lam) * cost_per_1k``, exactly the best action of the re-priced distribution.
        """
        actions = self._candidate_indices(candidates)
        contexts = self.featurizer.shared(embeddings)
        learned = [self._learned(ctx, actions) for ctx in contexts]
        tokens = np.broadcast_to(np.asarray(prompt_tokens, dtype=np.float64), (embeddings.shape[0],))
        if self.config.exploration != "squarecb":
            if any(lam != self.config.learned_lam for lam in lams):
                raise InvalidInput("policy: only a squarecb policy can be re-priced for another lam")
            return np.tile(np.argmax(np.stack(learned), axis=1), (len(lams), 1))
        gaps = np.stack([score_gaps(p, self.gamma) for p in learned]) if learned else np.zeros((0, len(self.catalog)))
        costs = self.costs.per_1k(tokens)
        return np.stack(
            [np.argmin(gaps + (lam - self.config.learned_lam) * costs, axis=1) for lam in lams]
        ).astype(np.int64)

    def greedy_many(
        self,
        embeddings: npt.NDArray[np.float32],
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: npt.ArrayLike,
    ) -> Probs:
        """The operating point without exploration, shape ``(n, len(catalog))``: each router arm's most likely
        model, each fixed arm's model (the router at ``lam`` where it is not offered), mixed by the weights."""
        n = embeddings.shape[0]
        actions = self._candidate_indices(candidates)
        out = np.zeros((n, len(self.catalog)), dtype=np.float64)
        for arm, w in zip(self.operating.arms, self.operating.weights):
            if arm.model is not None and self.catalog.index(arm.model) in actions:
                out[:, self.catalog.index(arm.model)] += w
                continue
            lam = arm.lam if arm.lam is not None else self.config.lam
            picks = self.greedy_choices(embeddings, [lam], candidates, prompt_tokens=prompt_tokens)[0]
            out[np.arange(n), picks] += w
        return out

    def predict_one(
        self, embedding: npt.NDArray[np.float32], candidates: Sequence[str] | None = None, *, prompt_tokens: float
    ) -> dict[str, float]:
        """The full distribution over the catalog (catalog order) for one prompt embedding."""
        probs = self.predict_many(embedding.reshape(1, -1), candidates, prompt_tokens=prompt_tokens)[0]
        return dict(zip(self.catalog.names, probs.tolist()))

    def sample(self, probs: Probs, rng: np.random.Generator) -> Decision:
        """Draw a model from a distribution in catalog order; the decision carries the drawn model's probability."""
        choice = draw(probs, rng.random())
        dist = dict(zip(self.catalog.names, probs.tolist()))
        model = self.catalog.names[choice]
        return Decision(model=model, probability=dist[model], distribution=dist)

    @property
    def gamma(self) -> float:
        """SquareCB's ``gamma = gamma_scale * sqrt(updates)``: VW counts learned examples and saves the count."""
        if self.config.exploration != "squarecb":
            raise InvalidInput("policy: only a squarecb policy has a gamma (re-pricing needs it)")
        return self.config.gamma_scale * float(np.sqrt(max(self.updates, 1)))

    def decide(
        self,
        embedding: npt.NDArray[np.float32],
        rng: np.random.Generator,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float,
        lam: float | None = None,
        point: OperatingPoint | None = None,
    ) -> Decision:
        """Sample a model for one prompt embedding (exploring); the decision carries its probability."""
        context = self.featurizer.shared(embedding.reshape(1, -1))[0]
        probs = self.distribution(context, candidates, prompt_tokens=prompt_tokens, lam=lam, point=point)
        return self.sample(probs, rng)

    def decide_and_learn(
        self,
        context: Context,
        rng: np.random.Generator,
        quality: Floats,
        cost: Floats,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float,
        lam: float,
    ) -> tuple[int, float]:
        """Serve one prompt with the router at ``lam`` and learn from the chosen model's outcome at once: the
        online loop's step.

        ``quality`` and ``cost`` hold every model's outcome in catalog order; only the chosen one is read.
        The same draw and update as :meth:`distribution`, :meth:`sample` then :meth:`learn_context` (so the
        same results), without building a :class:`Decision`. Returns the chosen catalog index and its probability.
        """
        actions = self._candidate_indices(candidates)
        probs = self._guarded(self._priced(self._learned(context, actions), lam, prompt_tokens), actions, prompt_tokens)
        choice = draw(probs, rng.random())
        q, c, p = float(quality[choice]), float(cost[choice]), float(probs[choice])
        if not 0.0 <= q <= 1.0 or not (np.isfinite(c) and c >= 0):
            raise InvalidInput(f"policy: model {choice}'s outcome needs quality in [0, 1] and cost >= 0, got {q}, {c}")
        if self.prior is not None:  # the prior's rule needs the router's greedy choice before the update
            checked = (actions, actions.index(choice), self.config.vw_cost(q, c), self._weighted(p))
            self._learn_checked(context, checked, prompt_tokens, c, (q, c, p))
            return choice, p
        self._run(context, actions, (actions.index(choice), self.config.vw_cost(q, c), self._weighted(p)))
        self.costs.observe_cost(choice, prompt_tokens, c)
        self.updates += 1
        return choice, p

    def learn_context(
        self,
        context: Context,
        model: str,
        quality: float,
        cost_usd: float,
        propensity: float,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float,
        observe_cost: bool = True,
    ) -> float:
        """Learn from one graded decision on a precomputed context; returns the probability the router at the
        policy's ``lam`` gave ``model`` before the update (progressive validation). The cost model learns the
        call's cost too unless ``observe_cost`` is False (the service meters usage and counts it itself)."""
        checked = self._checked(model, quality, cost_usd, propensity, candidates)
        outcome = (float(quality), float(cost_usd), float(propensity))
        return self._learn_checked(context, checked, prompt_tokens, float(cost_usd) if observe_cost else None, outcome)

    def learn_one(
        self,
        embedding: npt.NDArray[np.float32],
        model: str,
        quality: float,
        cost_usd: float,
        propensity: float,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float,
        observe_cost: bool = True,
    ) -> float:
        """Learn from one graded decision: ``model`` was chosen with ``propensity`` among ``candidates``."""
        context = self.featurizer.shared(embedding.reshape(1, -1))[0]
        return self.learn_context(
            context,
            model,
            quality,
            cost_usd,
            propensity,
            candidates,
            prompt_tokens=prompt_tokens,
            observe_cost=observe_cost,
        )

    def learn_many(
        self,
        embeddings: npt.NDArray[np.float32],
        models: Sequence[str],
        qualities: Floats,
        costs: Floats,
        propensities: Floats,
        candidates: Sequence[Sequence[str] | None],
        *,
        prompt_tokens: Floats,
        observe_costs: bool = True,
    ) -> Probs:
        """Learn from graded decisions in order (one VW update each); all are checked before any is learned.

        Returns, per event, the probability the router at the policy's ``lam`` gave the logged model *before*
        learning from it: progressive validation, the input of an honest running off-policy estimate.
        """
        n = embeddings.shape[0]
        sizes = (len(models), len(qualities), len(costs), len(propensities), len(candidates), len(prompt_tokens))
        if any(size != n for size in sizes):
            raise InvalidInput(
                "policy: learn_many needs one model, quality, cost, propensity, candidate set and prompt_tokens per row"
            )
        rows = [self._checked(models[i], qualities[i], costs[i], propensities[i], candidates[i]) for i in range(n)]
        before = np.zeros(n, dtype=np.float64)
        for i, (shared, checked) in enumerate(zip(self.featurizer.shared(embeddings), rows)):
            observed = float(costs[i]) if observe_costs else None
            outcome = (float(qualities[i]), float(costs[i]), float(propensities[i]))
            before[i] = self._learn_checked(shared, checked, float(prompt_tokens[i]), observed, outcome)
        return before

    def _weighted(self, propensity: float) -> float:
        """The propensity VW weighs the update by (``1 / p``), floored so the weight stays <= ``max_weight``."""
        floor = 1.0 / self.config.max_weight if self.config.max_weight is not None else 0.0
        return max(propensity, floor)

    def _learn_checked(
        self,
        context: Context,
        checked: tuple[list[int], int, float, float],
        tokens: float,
        cost: float | None,
        outcome: tuple[float, float, float] | None = None,
    ) -> float:
        """One VW update from a validated event; the probability the logged model had before it. ``outcome``
        (quality, cost, logged propensity) feeds the day-one prior's rule."""
        actions, pos, vw_cost, propensity = checked
        learned = np.zeros(len(self.catalog), dtype=np.float64)
        for a, prob in self._run(context, actions, (pos, vw_cost, propensity)):
            learned[actions[a]] = prob
        priced = self._priced(learned, self.config.lam, tokens)
        before = priced[actions[pos]]
        if self.prior is not None and outcome is not None:
            q, c, p = outcome
            self.prior.observe(
                self.catalog.names,
                actions[pos],
                int(np.argmax(priced)),
                p,
                q,
                c,
                self.costs.per_1k(tokens),
                self.config.lam,
                default_offered=self.catalog.index(self.prior.default) in actions,
            )
        if cost is not None:
            self.costs.observe_cost(actions[pos], tokens, cost)
        self.updates += 1
        return float(before)

    def _checked(
        self, model: str, quality: float, cost: float, propensity: float, candidates: Sequence[str] | None
    ) -> tuple[list[int], int, float, float]:
        """Validate one event before anything is learned: (offered actions, chosen position, VW cost, propensity)."""
        q, c, p = float(quality), float(cost), float(propensity)
        if not 0.0 <= q <= 1.0:
            raise InvalidInput(f"policy: 'quality' must lie in [0, 1], got {q}")
        if not (np.isfinite(c) and c >= 0):
            raise InvalidInput(f"policy: 'cost_usd' must be a finite number >= 0, got {c}")
        if not 0.0 < p <= 1.0:
            raise InvalidInput(f"policy: 'propensity' must lie in (0, 1], got {p}")
        if model not in self.catalog:
            raise InvalidInput(f"policy: 'model' {model!r} is not in the catalog")
        actions = self._candidate_indices(candidates)
        chosen = self.catalog.index(model)
        if chosen not in actions:
            raise InvalidInput(f"policy: chosen model '{model}' is not among the candidates")
        return actions, actions.index(chosen), self.config.vw_cost(q, c), self._weighted(p)

    # -- persistence ----------------------------------------------------------------------------
    def model_bytes(self) -> bytes:
        """The VW model as bytes."""
        return self._ws.serialize()

    def copy(self) -> Policy:
        """An independent policy with the same weights (e.g. to save while this one keeps learning)."""
        return self.with_catalog(self.catalog)

    def with_catalog(self, catalog: Catalog) -> Policy:
        """The same learned weights over a new catalog: known models keep what they learned, new ones are explored."""
        grown = Policy(
            catalog,
            self.featurizer,
            self.config,
            model_bytes=self.model_bytes(),
            costs=self.costs.with_catalog(catalog),
            operating=self.operating,
            prior=self.prior.for_catalog(catalog) if self.prior is not None else None,
        )
        grown.updates = self.updates
        return grown

    def at(self, operating: OperatingPoint) -> Policy:
        """This policy serving ``operating`` (the same weights; an independent copy)."""
        moved = self.copy()
        moved.operating = operating
        if operating.router_lam is not None:
            moved.config = replace(self.config, lam=operating.router_lam)
        return moved
