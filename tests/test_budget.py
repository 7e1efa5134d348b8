"""Re-pricing a real VW policy's decision for another lambda, and the dual-variable budget."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from router_ml import settings
from router_ml.budget import DualLambda, retarget, score_gaps, squarecb
from router_ml.catalog import Catalog, ModelSpec
from router_ml.embed import CachedEmbedder
from router_ml.features import FeatureConfig, Featurizer
from router_ml.policy import Policy, PolicyConfig
from router_ml.router import Router
from tests.servekit import MODELS


@pytest.fixture(scope="module")
def router(embedder: CachedEmbedder) -> Router:
    """A real policy that learned gpt-4o is best (quality 1) and the rest are not; it serves a small lam."""
    full = Catalog.load(settings.default_catalog())
    catalog = Catalog(tuple(full.spec(m) for m in MODELS))
    prompts = [f"question {i}: what is {i} + {i}?" for i in range(40)]
    emb = embedder.encode(prompts)
    policy = Policy(catalog, Featurizer.fit(emb, FeatureConfig(clusters=(2,))), PolicyConfig(lam=0.01))
    rng = np.random.default_rng(0)
    for i in range(600):
        d = policy.decide(emb[i % 40], rng, prompt_tokens=12)
        policy.learn(
            emb[i % 40], d.model, float(d.model == "gpt-4o"), 1e-5, d.probability, prompt_tokens=12, observe_cost=False
        )
    return Router(policy, embedder)


def test_inverting_squarecb_gives_back_the_same_distribution(router: Router) -> None:
    ctx = router.policy.featurizer.shared(router.embed("question 3: what is 3 + 3?").reshape(1, -1))[0]
    for candidates in (None, ["gpt-4o", "gemini-1.5-flash"]):
        probs = router.policy.decide(ctx, np.random.default_rng(0), candidates, prompt_tokens=12, lam=0.0).distribution
        p = np.array(list(probs.values()))
        rebuilt = squarecb(score_gaps(p, router.policy.gamma), router.policy.gamma)
        assert np.allclose(rebuilt, p, atol=1e-6)
        assert np.array_equal(retarget(p, router.policy.gamma, np.zeros(len(p))), p)


def test_the_policys_gamma_is_the_one_vw_explores_with() -> None:
    """The round trip above holds for any gamma, so this checks gamma against VW itself.

    SquareCB gives a non-best model ``1 / (K + gamma * gap)``, with VW's gamma growing with the updates it has
    learned. Updates on another cluster's prompts, among other models of the same price, leave the learned gaps
    between models ``a`` and ``b`` on this cluster's prompt as they were (what they move is common to every model),
    while VW's gamma grows: VW's probabilities move, and the gaps recovered with :attr:`Policy.gamma` must not.
    """
    catalog = Catalog(tuple(ModelSpec(name, 1.0, 1.0) for name in ("a", "b", "c", "d")))
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    x = (np.repeat(centres, 50, axis=0) + rng.normal(0, 0.05, size=(100, 8))).astype(np.float32)
    policy = Policy(catalog, Featurizer.fit(x, FeatureConfig(clusters=(2,))), PolicyConfig(gamma_scale=10.0))
    here, there = (x[policy.featurizer.assign(x)[:, 0] == k] for k in (0, 1))
    for i in range(100):  # on this cluster, a is right more often than b
        model = "ab"[i % 2]
        policy.learn(here[i % len(here)], model, float(model == "a" or i % 3 == 0), 0.0, 0.5, prompt_tokens=1)
    ctx = policy.featurizer.shared(here[:1])[0]

    def offered() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        probs = policy.decide(ctx, rng, ["a", "b"], prompt_tokens=1, lam=0.0).distribution
        p = np.array(list(probs.values()))
        return p, score_gaps(p, policy.gamma)

    before, gaps_before = offered()
    for i in range(300):  # elsewhere, among other models: VW's gamma grows by sqrt(4)
        policy.learn(there[i % len(there)], "cd"[i % 2], float(i % 3 == 0), 0.0, 0.5, ["c", "d"], prompt_tokens=1)
    after, gaps_after = offered()
    assert 0.01 < before[1] < 0.2 and after[1] < 0.6 * before[1], "VW explores b less as its gamma grows"
    assert gaps_before[1] > 0 and gaps_after[1] == pytest.approx(gaps_before[1], rel=1e-3)


def test_a_higher_lambda_buys_cheaper_decisions(router: Router) -> None:
    prompt = "question 5: what is 5 + 5?"
    emb = router.embed(prompt)
    costs = router.expected_cost_per_1k(12)
    spent = []
    for lam in (0.01, 1.0, 10.0, 1000.0):
        draws = [router.decide(emb, np.random.default_rng(s), lam=lam, prompt_tokens=12) for s in range(200)]
        dist = np.array(list(draws[0].distribution.values()))
        assert dist.sum() == pytest.approx(1.0)
        for d in draws[:5]:
            assert d.probability == d.distribution[d.model] > 0
        spent.append(float(dist @ costs))
    assert spent[0] == pytest.approx(costs[router.policy.catalog.index("gpt-4o")], rel=0.05), "lam0 keeps gpt-4o"
    assert spent == sorted(spent, reverse=True) and spent[-1] < spent[0] / 10
    with pytest.raises(ValueError, match="lambda"):
        router.decide(emb, np.random.default_rng(0), lam=float("nan"))


def test_usage_moves_cost_estimates_and_unseen_models_borrow_the_pool(router: Router) -> None:
    before = router.policy.costs.expected_output_tokens()
    assert np.allclose(before, before[0])
    router.observe_usage("gpt-4o", 10)
    router.observe_usage("gpt-4o", 30)
    after = router.policy.costs.expected_output_tokens()
    gpt = router.policy.catalog.index("gpt-4o")
    assert after[gpt] == pytest.approx((40 + 20) / 3)
    assert np.allclose(np.delete(after, gpt), 20.0)


def test_dual_lambda_holds_a_budget() -> None:
    """A simulated stream: each call costs what the current multiplier buys; spend settles near the target."""
    budget = DualLambda(target_usd_per_1k=1.0, step=0.05)
    rng = np.random.default_rng(0)
    costs = []
    for _ in range(4000):
        # an expensive model ($5 per 1k) unless the multiplier makes the cheap one ($0.2 per 1k) worth it
        p_expensive = 1.0 / (1.0 + np.exp(20 * (budget.mu - 0.3)))
        cost = (5.0 if rng.random() < p_expensive else 0.2) / 1000.0
        costs.append(cost)
        budget.observe(cost)
    late = np.mean(costs[-2000:]) * 1000
    assert 0.8 < late < 1.25, late
    assert budget.mu > 0
    with pytest.raises(ValueError, match="target_usd_per_1k"):
        DualLambda(target_usd_per_1k=0)


def test_spend_without_a_call_of_its_own_counts_against_the_budget() -> None:
    """Judging an answer costs money but routes nothing: at calls=0 it only pushes the multiplier up, by its share of
    the target; the same amount as a call of its own (calls=1) is exactly on target and moves nothing."""
    judged, routed = DualLambda(target_usd_per_1k=1.0, step=0.1), DualLambda(target_usd_per_1k=1.0, step=0.1)
    assert judged.observe(0.0005, calls=0) == pytest.approx(0.1 * 0.5)
    assert routed.observe(0.001) == 0.0
