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

The public surface is small: :meth:`Policy.decide` and :meth:`Policy.learn` for one prompt (its embedding, or a
context precomputed by :meth:`Featurizer.shared`), :meth:`Policy.predict_many`, :meth:`Policy.greedy_choices` and
:meth:`Policy.learn_many` for many, :meth:`Policy.decide_and_learn` for the online loop's fused step, and bytes in and
out (``model_bytes=`` and :meth:`Policy.to_bytes`); :mod:`router_ml.artifacts` stores the bytes with the catalog and
features. VW itself is reached only through :mod:`router_ml.vw_adapter`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from router_ml.bounded import ByteLRU
from router_ml.budget import retarget, score_gaps
from router_ml.catalog import Catalog
from router_ml.cost_model import CostModel
from router_ml.day_one import DayOnePrior
from router_ml.errors import InvalidInput
from router_ml.features import Context, Featurizer, action_features
from router_ml.operating import Arm, OperatingPoint
from router_ml.reward import reward
from router_ml.sampling import draw
from router_ml.vw_adapter import CBModel

Exploration = Literal["squarecb", "epsilon"]
Learns = Literal["quality", "reward"]
Floats = Sequence[float] | npt.NDArray[np.float64]
Probs = npt.NDArray[np.float64]
Embedding = npt.NDArray[np.float32]
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


@dataclass(frozen=True)
class PolicyConfig:
    """Learner settings. ``lam`` is quality per USD per 1,000 requests (see the module docstring).

    ``max_weight`` caps the importance weight ``1 / propensity`` VW gives each update. VW's MTR
    reduction (the one SquareCB runs on) regresses the chosen action's reward with weight ``1/p``;
    once SquareCB is nearly greedy, an explored model picked with ``p = 0.001`` gets a 1000x update
    that swings its estimate. The default cap of 1 makes every update plain regression, the oracle
    SquareCB's analysis assumes; ``None`` restores full importance weighting (e.g. to correct for a
    skewed logging policy under a misspecified model). Chosen on a validation split inside TRAIN
    (``docs/decisions/0003-importance-weight-cap.md``).
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

    One writer at a time: the VW model and the cached examples are not thread-safe, so a service gives the policy a
    single owner and queues predictions and updates to it.

    A prompt is given as its embedding or as its context (:meth:`Featurizer.shared`; the online loop and the
    benchmark compute each prompt's once). ``prompt_tokens`` (the prompt's length in tokens,
    :func:`~router_ml.cost_model.estimate_tokens`) prices each model for the prompt; ``lam`` overrides the operating
    point with the router alone at that cost weight. Distributions are in catalog order, 0 outside ``candidates``.
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
        fast: bool | None = None,
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
        actions = action_features(catalog.names, [m.blended_usd_per_mtok for m in catalog.models])
        self.vw = CBModel(config.vw_args(featurizer.config.interactions), actions, model_bytes, fast=fast)
        """The VW model (:mod:`router_ml.vw_adapter`); ``fast`` chooses its path (default: the fast one if present)."""
        self.updates = 0
        self._offered: ByteLRU[tuple[str, ...] | None, list[int]] = ByteLRU(CANDIDATE_CACHE_BYTES, _list_bytes)
        self._cores: ByteLRU[tuple[int, ...], list[Any]] = ByteLRU(CANDIDATE_CACHE_BYTES, _list_bytes)
        # VW shared examples by context object: the online loop serves each prompt about 12 times, and
        # decide then learn on one context reuse one example. The context is kept so its id stays unique.
        # A caller that never reuses a context (the service) sets its max_bytes to 0.
        self.shared_cache: ByteLRU[int, tuple[Context, Any]] = ByteLRU(SHARED_CACHE_BYTES, _shared_bytes)

    # -- one prompt -----------------------------------------------------------------------------
    def decide(
        self,
        prompt: Embedding | Context,
        rng: np.random.Generator,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float,
        lam: float | None = None,
        point: OperatingPoint | None = None,
    ) -> Decision:
        """Sample a model for one prompt (exploring): the router alone at ``lam`` if given, else ``point``'s mixture
        (by default the policy's own operating point). The decision carries its probability and the distribution."""
        probs = self._distribution(self._context(prompt), candidates, prompt_tokens, lam, point)
        choice = draw(probs, rng.random())
        dist = dict(zip(self.catalog.names, probs.tolist()))
        model = self.catalog.names[choice]
        return Decision(model=model, probability=dist[model], distribution=dist)

    def learn(
        self,
        prompt: Embedding | Context,
        model: str,
        quality: float,
        cost_usd: float,
        propensity: float,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: float,
        observe_cost: bool = True,
    ) -> float:
        """Learn from one graded decision: ``model`` was chosen with ``propensity`` among ``candidates``. Returns the
        probability the router at the policy's ``lam`` gave ``model`` before the update (progressive validation). The
        cost model learns the call's cost too unless ``observe_cost`` is False (the service meters usage itself)."""
        checked = self._checked(model, quality, cost_usd, propensity, candidates)
        cost = float(cost_usd) if observe_cost else None
        outcome = (float(quality), float(cost_usd), float(propensity))
        return self._learn_checked(self._context(prompt), checked, prompt_tokens, cost, outcome)

    learn_one = learn
    """:meth:`learn` under its former name, kept for ``serve/learner.py``."""

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
        The same draw and update as :meth:`decide` then :meth:`learn` (so the same results), without building a
        :class:`Decision` or pricing the progressive estimate. Returns the chosen catalog index and its probability.
        """
        actions = self._candidate_indices(candidates)
        probs = self._guarded(self._priced(self._learned(context, actions), lam, prompt_tokens), actions, prompt_tokens)
        choice = draw(probs, rng.random())
        q, c, p = float(quality[choice]), float(cost[choice]), float(probs[choice])
        if not 0.0 <= q <= 1.0 or not (np.isfinite(c) and c >= 0):
            raise InvalidInput(f"policy: model {choice}'s outcome needs quality in [0, 1] and cost >= 0, got {q}, {c}")
        if self.prior is not None:  # the prior's rule needs the router's greedy choice before the update
            checked = (actions, choice, self.config.vw_cost(q, c), self._weighted(p))
            self._learn_checked(context, checked, prompt_tokens, c, (q, c, p))
            return choice, p
        self._vw_learn(context, actions, choice, self.config.vw_cost(q, c), self._weighted(p))
        self.costs.observe_cost(choice, prompt_tokens, c)
        self.updates += 1
        return choice, p

    # -- many prompts ---------------------------------------------------------------------------
    def predict_many(
        self,
        embeddings: Embedding,
        candidates: Sequence[str] | None = None,
        *,
        prompt_tokens: npt.ArrayLike,
        lam: float | None = None,
        greedy: bool = False,
    ) -> Probs:
        """Distributions, shape ``(n, len(catalog))``; ``prompt_tokens`` has one length per row (or one for all).

        The router alone at ``lam`` if given, else the policy's operating point. ``greedy`` serves the operating
        point without exploration: each router arm's most likely model, each fixed arm's model (the router at its
        ``lam`` where the model is not offered), mixed by the weights.
        """
        if greedy:
            return self._greedy_many(embeddings, candidates, prompt_tokens, lam)
        tokens = np.broadcast_to(np.asarray(prompt_tokens, dtype=np.float64), (embeddings.shape[0],))
        rows = [
            self._distribution(ctx, candidates, float(t), lam, None)
            for ctx, t in zip(self.featurizer.shared(embeddings), tokens)
        ]
        return np.stack(rows) if rows else np.zeros((0, len(self.catalog)), dtype=np.float64)

    def greedy_choices(
        self,
        embeddings: Embedding,
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
        return np.stack([np.argmin(gaps + (lam - self.config.learned_lam) * costs, axis=1) for lam in lams]).astype(
            np.int64
        )

    def learn_many(
        self,
        embeddings: Embedding,
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

    @property
    def gamma(self) -> float:
        """SquareCB's ``gamma = gamma_scale * sqrt(updates)``: VW counts learned examples and saves the count."""
        if self.config.exploration != "squarecb":
            raise InvalidInput("policy: only a squarecb policy has a gamma (re-pricing needs it)")
        return self.config.gamma_scale * float(np.sqrt(max(self.updates, 1)))

    # -- bytes and derived policies -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The VW model as bytes; ``Policy(..., model_bytes=...)`` takes them back."""
        return self.vw.to_bytes()

    def copy(self) -> Policy:
        """An independent policy with the same weights (e.g. to save while this one keeps learning)."""
        return self.with_catalog(self.catalog)

    def with_catalog(self, catalog: Catalog) -> Policy:
        """The same learned weights over a new catalog: known models keep what they learned, new ones are explored."""
        grown = Policy(
            catalog,
            self.featurizer,
            self.config,
            model_bytes=self.to_bytes(),
            costs=self.costs.with_catalog(catalog),
            operating=self.operating,
            fast=self.vw.fast,
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

    # -- internals ------------------------------------------------------------------------------
    def _context(self, prompt: Embedding | Context) -> Context:
        """A prompt's context: given, or computed from its embedding."""
        if isinstance(prompt, dict):
            return prompt
        return self.featurizer.shared(prompt.reshape(1, -1))[0]

    def _examples(self, shared: Context, actions: list[int]) -> tuple[Any, list[Any]]:
        """VW's shared example for ``shared`` and the offered actions' examples, both cached."""
        cached = self.shared_cache.get(id(shared))
        if cached is None or cached[0] is not shared:
            cached = (shared, self.vw.shared(shared))
            self.shared_cache.put(id(shared), cached)
        key = tuple(actions)
        offered = self._cores.get(key)
        if offered is None:
            offered = self.vw.offered(actions)
            self._cores.put(key, offered)
        return cached[1], offered

    def _vw_learn(self, context: Context, actions: list[int], chosen: int, vw_cost: float, propensity: float) -> Probs:
        """One VW update (``chosen`` is a catalog index among ``actions``); VW's distribution before it."""
        shared, offered = self._examples(context, actions)
        return self._in_catalog(self.vw.learn(shared, offered, chosen, vw_cost, propensity), actions)

    def _in_catalog(self, prediction: list[tuple[int, float]], actions: list[int]) -> Probs:
        out = np.zeros(len(self.catalog), dtype=np.float64)
        for pos, prob in prediction:
            out[actions[pos]] = prob
        return out

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

    def _learned(self, context: Context, actions: list[int]) -> Probs:
        """VW's own distribution (SquareCB over what it learned) in catalog order, 0 outside ``actions``."""
        shared, offered = self._examples(context, actions)
        return self._in_catalog(self.vw.predict(shared, offered), actions)

    def _priced(self, learned: Probs, lam: float, prompt_tokens: float) -> Probs:
        """Re-price VW's distribution for the reward at ``lam`` on a prompt of ``prompt_tokens`` tokens."""
        if not (np.isfinite(lam) and lam >= 0):
            raise InvalidInput(f"policy: 'lambda' must be a finite number >= 0, got {lam}")
        shift = lam - self.config.learned_lam
        if shift == 0:
            return learned
        return retarget(learned, self.gamma, shift * self.costs.per_1k(prompt_tokens))

    def _arm(self, arm: Arm, learned: Probs, actions: list[int], tokens: float) -> Probs:
        if arm.model is not None and self.catalog.index(arm.model) in actions:
            out = np.zeros(len(self.catalog), dtype=np.float64)
            out[self.catalog.index(arm.model)] = 1.0
            return out
        # a fixed model that is not offered gives way to the router at the policy's own lam
        return self._priced(learned, arm.lam if arm.lam is not None else self.config.lam, tokens)

    def _distribution(
        self,
        context: Context,
        candidates: Sequence[str] | None,
        prompt_tokens: float,
        lam: float | None,
        point: OperatingPoint | None,
    ) -> Probs:
        """The distribution for one context: the router alone at ``lam`` if given, else ``point``'s mixture."""
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

    def _greedy_many(
        self,
        embeddings: Embedding,
        candidates: Sequence[str] | None,
        prompt_tokens: npt.ArrayLike,
        lam: float | None,
    ) -> Probs:
        """:meth:`predict_many` with ``greedy``."""
        n = embeddings.shape[0]
        if lam is not None:
            out = np.zeros((n, len(self.catalog)), dtype=np.float64)
            picks = self.greedy_choices(embeddings, [lam], candidates, prompt_tokens=prompt_tokens)[0]
            out[np.arange(n), picks] = 1.0
            return out
        actions = self._candidate_indices(candidates)
        out = np.zeros((n, len(self.catalog)), dtype=np.float64)
        for arm, w in zip(self.operating.arms, self.operating.weights):
            if arm.model is not None and self.catalog.index(arm.model) in actions:
                out[:, self.catalog.index(arm.model)] += w
                continue
            arm_lam = arm.lam if arm.lam is not None else self.config.lam
            picks = self.greedy_choices(embeddings, [arm_lam], candidates, prompt_tokens=prompt_tokens)[0]
            out[np.arange(n), picks] += w
        return out

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
        actions, chosen, vw_cost, propensity = checked
        learned = self._vw_learn(context, actions, chosen, vw_cost, propensity)
        priced = self._priced(learned, self.config.lam, tokens)
        before = priced[chosen]
        if self.prior is not None and outcome is not None:
            q, c, p = outcome
            self.prior.observe(
                self.catalog.names,
                chosen,
                int(np.argmax(priced)),
                p,
                q,
                c,
                self.costs.per_1k(tokens),
                self.config.lam,
                default_offered=self.catalog.index(self.prior.default) in actions,
            )
        if cost is not None:
            self.costs.observe_cost(chosen, tokens, cost)
        self.updates += 1
        return float(before)

    def _checked(
        self, model: str, quality: float, cost: float, propensity: float, candidates: Sequence[str] | None
    ) -> tuple[list[int], int, float, float]:
        """Validate one event before anything is learned: (offered actions, chosen catalog index, VW cost,
        propensity)."""
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
        return actions, chosen, self.config.vw_cost(q, c), self._weighted(p)
