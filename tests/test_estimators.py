"""Off-policy estimators and the reward model: hand-computed values, then coverage against exact replay on real data."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.embed import CachedEmbedder
from router_ml.estimators import (
    IPS,
    SNIPS,
    BanditFeedback,
    DirectMethod,
    DoublyRobust,
    Estimate,
    bootstrap,
    effective_sample_size,
    estimate_all,
)
from router_ml.features import FeatureConfig, Featurizer
from router_ml.fullinfo import FullInfo
from router_ml.policy import PolicyConfig
from router_ml.replay import replay_distribution
from router_ml.reward import reward
from router_ml.reward_model import RewardModel, RewardModelConfig, cross_fit_predict
from router_ml.simulate import simulate

Z95 = 1.959963984540054


# -- a hand-computable example --------------------------------------------------------------------
# 4 events, 2 actions, logging probability 1/2 each. Weights pi(a_i|x_i) / p_i = [2, 0, 1, 2].
def small() -> BanditFeedback:
    return BanditFeedback(
        actions=np.array([0, 1, 0, 1]),
        rewards=np.array([1.0, 0.0, 0.0, 1.0]),
        propensities=np.full(4, 0.5),
        target=np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]),
        reward_hat=np.array([[0.5, 0.2], [0.6, 0.1], [0.3, 0.9], [0.4, 0.8]]),
    )


def test_weights_and_ess() -> None:
    fb = small()
    assert fb.weights().tolist() == [2.0, 0.0, 1.0, 2.0]
    assert fb.weights(clip=1.5).tolist() == [1.5, 0.0, 1.0, 1.5]
    assert effective_sample_size(fb.weights()) == pytest.approx(25 / 9)  # (2+0+1+2)^2 / (4+0+1+4)
    assert effective_sample_size(np.zeros(3)) == 0.0
    assert effective_sample_size(np.ones(7)) == pytest.approx(7.0)


def test_ips_by_hand() -> None:
    est = IPS().estimate(small())
    # terms w*r = [2, 0, 0, 2]: mean 1, sample variance (1+1+1+1)/3
    se = math.sqrt(4 / 3) / 2
    assert est.method == "ips"
    assert est.value == pytest.approx(1.0)
    assert (est.low, est.high) == pytest.approx((1.0 - Z95 * se, 1.0 + Z95 * se))
    assert est.ess == pytest.approx(25 / 9)
    assert est.n == 4
    assert est.contains(est.value)


def test_snips_by_hand() -> None:
    est = SNIPS().estimate(small())
    # (2 + 0 + 0 + 2) / (2 + 0 + 1 + 2); residuals w(r - V) = [0.4, 0, -0.8, 0.4], mean weight 5/4
    se = math.sqrt((0.16 + 0.64 + 0.16) / 3) / 1.25 / 2
    assert est.value == pytest.approx(0.8)
    assert (est.low, est.high) == pytest.approx((0.8 - Z95 * se, 0.8 + Z95 * se))
    assert est.contains(0.8)


def test_dm_and_dr_by_hand() -> None:
    dm = DirectMethod().estimate(small())
    # sum_a pi(a|x) r_hat(x, a) per event: [0.5, 0.6, 0.5*0.3 + 0.5*0.9, 0.8]
    dm_terms = np.array([0.5, 0.6, 0.6, 0.8])
    assert dm.value == pytest.approx(0.625)
    assert dm.high - dm.value == pytest.approx(Z95 * dm_terms.std(ddof=1) / 2)
    assert dm.ess == 4.0
    dr = DoublyRobust().estimate(small())
    # plus w_i (r_i - r_hat(x_i, a_i)): [2*(1-0.5), 0, 1*(0-0.3), 2*(1-0.8)]
    dr_terms = dm_terms + np.array([1.0, 0.0, -0.3, 0.4])
    assert dr.value == pytest.approx(0.9)
    assert dr.high - dr.value == pytest.approx(Z95 * dr_terms.std(ddof=1) / 2)
    assert dr.ess == pytest.approx(25 / 9)
    assert dm.contains(dm.value) and dr.contains(dr.value)


def test_clipping_caps_the_weights() -> None:
    fb = small()
    ips = IPS(clip=1.5).estimate(fb)
    assert ips.method == "ips(clip=1.5)"
    assert ips.value == pytest.approx((1.5 + 1.5) / 4)
    assert ips.ess == pytest.approx(16 / 5.5)  # (1.5+1+1.5)^2 / (2.25+1+2.25)
    assert SNIPS(clip=1.5).estimate(fb).value == pytest.approx(3.0 / 4.0)
    assert DoublyRobust(clip=1.5).estimate(fb).value == pytest.approx((2.5 + 1.5 * 0.5 + 0.0 - 0.3 + 1.5 * 0.2) / 4)
    # a cap above every weight changes nothing
    assert IPS(clip=100.0).estimate(fb).value == pytest.approx(IPS().estimate(fb).value)
    with pytest.raises(ValueError, match="'clip'"):
        IPS(clip=0.0)
    with pytest.raises(ValueError, match="'clip'"):
        DoublyRobust(clip=float("nan"))


def random_feedback(seed: int, n: int = 500, k: int = 5) -> BanditFeedback:
    rng = np.random.default_rng(seed)
    logging = rng.dirichlet(np.ones(k), size=n)
    actions = np.array([rng.choice(k, p=p) for p in logging])
    target = rng.dirichlet(np.ones(k) * 0.5, size=n)
    return BanditFeedback(
        actions=actions,
        rewards=rng.random(n),
        propensities=logging[np.arange(n), actions],
        target=target,
        reward_hat=rng.random((n, k)),
    )


def test_dm_ignores_the_logged_events() -> None:
    fb = random_feedback(0)
    other = BanditFeedback(
        actions=(fb.actions + 1) % fb.k,
        rewards=1.0 - fb.rewards,
        propensities=np.full(fb.n, 0.9),
        target=fb.target,
        reward_hat=fb.reward_hat,
    )
    assert DirectMethod().estimate(other) == DirectMethod().estimate(fb)


def test_dr_is_ips_with_a_zero_model_and_dm_with_a_perfect_one() -> None:
    fb = random_feedback(1)
    zero = fb.with_outcome(fb.rewards, np.zeros((fb.n, fb.k)))
    for clip in (None, 3.0):
        dr, ips = DoublyRobust(clip).estimate(zero), IPS(clip).estimate(zero)
        assert (dr.value, dr.low, dr.high, dr.ess) == pytest.approx((ips.value, ips.low, ips.high, ips.ess))
    assert fb.reward_hat is not None
    exact = fb.with_outcome(fb.reward_hat[np.arange(fb.n), fb.actions], fb.reward_hat)
    dr, dm = DoublyRobust().estimate(exact), DirectMethod().estimate(exact)
    assert (dr.value, dr.low, dr.high) == pytest.approx((dm.value, dm.low, dm.high))


def test_several_outcomes_share_the_weights() -> None:
    """Reward = quality - lam * 1000 * cost: every estimator is linear in the outcome."""
    quality = random_feedback(2)
    rng = np.random.default_rng(3)
    cost_values, cost_hat = rng.random(quality.n) * 1e-3, rng.random((quality.n, quality.k)) * 1e-3
    cost = quality.with_outcome(cost_values, cost_hat)
    assert cost.propensities is quality.propensities and cost.target is quality.target
    assert quality.reward_hat is not None
    scale = PolicyConfig().lam * 1000.0
    reward = quality.with_outcome(quality.rewards - scale * cost_values, quality.reward_hat - scale * cost_hat)
    q, c, r = estimate_all(quality), estimate_all(cost), estimate_all(reward)
    assert list(r) == ["ips", "snips", "dm", "dr"]
    for name in r:
        assert r[name].value == pytest.approx(q[name].value - scale * c[name].value)
    # with_outcome never carries a quality model over to another outcome
    assert quality.with_outcome(cost_values).reward_hat is None


def test_estimate_all_defaults_and_names() -> None:
    fb = random_feedback(4)
    plain = fb.with_outcome(fb.rewards)
    assert list(estimate_all(plain)) == ["ips", "snips"]
    picked = estimate_all(fb, [IPS(), IPS(clip=5.0), SNIPS(clip=5.0)], alpha=0.1)
    assert list(picked) == ["ips", "ips(clip=5)", "snips(clip=5)"]
    with pytest.raises(ValueError, match="distinct"):
        estimate_all(fb, [IPS(), IPS()])
    with pytest.raises(ValueError, match="'reward_hat'"):
        estimate_all(plain, [DoublyRobust()])
    with pytest.raises(ValueError, match="'alpha'"):
        IPS().estimate(fb, alpha=1.0)


def test_interval_level() -> None:
    fb = random_feedback(5)
    for est in (IPS(), SNIPS(), DirectMethod(), DoublyRobust()):
        wide, narrow = est.estimate(fb, alpha=0.01), est.estimate(fb, alpha=0.2)
        assert wide.value == narrow.value
        assert wide.low < narrow.low <= narrow.value <= narrow.high < wide.high
        ratio = wide.half_width / narrow.half_width
        assert ratio == pytest.approx(2.5758293035489 / 1.2815515655446004)


def test_snips_without_overlap_is_nan_and_one_event_is_unbounded() -> None:
    fb = BanditFeedback(np.array([0, 0]), np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([[0.0, 1.0]] * 2))
    est = SNIPS().estimate(fb)
    assert math.isnan(est.value) and est.ess == 0.0
    assert IPS().estimate(fb).value == 0.0
    one = fb.take(np.array([0]))
    assert IPS().estimate(one).low == -math.inf and IPS().estimate(one).high == math.inf


def test_bootstrap_agrees_with_the_analytic_interval() -> None:
    fb = random_feedback(6, n=2000)
    for est in (IPS(), SNIPS(), DoublyRobust()):
        analytic = est.estimate(fb)
        boot = bootstrap(est, fb, n_boot=400, seed=1)
        assert boot.method == f"{analytic.method}+bootstrap"
        assert boot.value == analytic.value
        assert boot.low == pytest.approx(analytic.low, abs=0.2 * analytic.half_width)
        assert boot.high == pytest.approx(analytic.high, abs=0.2 * analytic.half_width)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"actions": np.array([0, 1, 2])}, "'actions'"),
        ({"actions": np.array([0.0, 1.0, 0.0, 1.0])}, "'actions'"),
        ({"actions": np.array([0, 1, 0, 2])}, "'actions'"),
        ({"actions": np.array([0, 1, 0, -1])}, "'actions'"),
        ({"rewards": np.array([1.0, 0.0, np.nan, 1.0])}, "'rewards'"),
        ({"rewards": np.ones(5)}, "'rewards'"),
        ({"propensities": np.array([0.5, 0.5, 0.0, 0.5])}, "'propensities'"),
        ({"propensities": np.array([0.5, 0.5, 1.5, 0.5])}, "'propensities'"),
        ({"propensities": np.full((4, 1), 0.5)}, "'propensities'"),
        ({"target": np.array([[1.0, 0.0]] * 3)}, "'target'"),
        ({"target": np.array([[0.7, 0.7]] * 4)}, "'target'"),
        ({"target": np.array([[1.5, -0.5]] * 4)}, "'target'"),
        ({"target": np.ones(4)}, "'target'"),
        ({"reward_hat": np.zeros((4, 3))}, "'reward_hat'"),
        ({"reward_hat": np.full((4, 2), np.inf)}, "'reward_hat'"),
    ],
)
def test_validation_names_the_field(change: dict[str, npt.NDArray[np.float64]], field: str) -> None:
    fb = small()
    parts = {
        "actions": fb.actions,
        "rewards": fb.rewards,
        "propensities": fb.propensities,
        "target": fb.target,
        "reward_hat": fb.reward_hat,
        **change,
    }
    with pytest.raises(ValueError, match=field):
        BanditFeedback(**parts)  # type: ignore[arg-type]


# -- the reward model ---------------------------------------------------------------------------------
def synthetic_events(
    n: int, seed: int, featurizer: Featurizer | None = None
) -> tuple[Featurizer, npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Unit-norm 16-d 'embeddings' whose first coordinate decides which of 4 actions is good; outcomes in {0, 1}."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    actions = rng.integers(0, 4, size=n)
    truth = true_quality(emb)
    outcomes = (rng.random(n) < truth[np.arange(n), actions]).astype(np.float64)
    feat = featurizer or Featurizer.fit(emb, FeatureConfig(clusters=(4,), seed=0))
    return feat, emb, actions, outcomes


def true_quality(emb: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    s = emb[:, :1].astype(np.float64)
    return np.hstack(
        [0.5 + 0.4 * np.tanh(4 * s), 0.5 - 0.4 * np.tanh(4 * s), np.full_like(s, 0.3), np.full_like(s, 0.7)]
    )


def test_reward_model_learns_a_context_dependent_outcome() -> None:
    feat, emb, actions, outcomes = synthetic_events(4000, seed=0)
    model = RewardModel.fit(feat, emb, actions, outcomes, 4)
    _, test_emb, _, _ = synthetic_events(1000, seed=1, featurizer=feat)
    pred, truth = model.predict(test_emb), true_quality(test_emb)
    assert pred.shape == (1000, 4) and pred.dtype == np.float64
    assert model.logistic and pred.min() >= 0.0 and pred.max() <= 1.0
    per_action_mean = np.array([outcomes[actions == a].mean() for a in range(4)])
    mse, baseline = ((pred - truth) ** 2).mean(), ((per_action_mean - truth) ** 2).mean()
    assert mse < 0.25 * baseline, (mse, baseline)
    assert model.report.n_events == 4000 and 0 < model.report.n_validation < 4000
    assert 1 <= model.report.best_epoch <= model.report.epochs
    # seeded: the same fit twice gives the same predictions
    again = RewardModel.fit(feat, emb, actions, outcomes, 4)
    assert np.array_equal(again.predict(test_emb), pred)


def test_reward_model_regresses_unbounded_outcomes_and_weights() -> None:
    feat, emb, actions, outcomes = synthetic_events(3000, seed=2)
    cost = 1e-4 * (1 + actions) + 1e-5 * emb[:, 0]  # like cost_usd: tiny and per-model
    model = RewardModel.fit(feat, emb, actions, cost, 4)
    assert not model.logistic
    pred = model.predict(emb[:200])
    assert np.abs(pred - (1e-4 * (1 + np.arange(4)) + 1e-5 * emb[:200, :1])).max() < 2e-5
    propensities = np.full(3000, 0.25)
    weighted = RewardModel.fit(
        feat,
        emb,
        actions,
        outcomes,
        4,
        propensities=propensities,
        config=RewardModelConfig(weighting="inverse_propensity"),
    )
    assert weighted.predict(emb[:5]).shape == (5, 4)


def test_cross_fit_predicts_each_event_out_of_fold() -> None:
    feat, emb, actions, outcomes = synthetic_events(1200, seed=3)
    config = RewardModelConfig(max_epochs=5)
    crossed = cross_fit_predict(feat, emb, actions, outcomes, 4, folds=3, config=config)
    assert crossed.shape == (1200, 4)
    fold = np.random.default_rng(config.seed).permutation(1200) % 3
    rest = np.flatnonzero(fold != 0)
    first = RewardModel.fit(feat, emb[rest], actions[rest], outcomes[rest], 4, config=config)
    held = np.flatnonzero(fold == 0)
    assert np.allclose(crossed[held], first.predict(emb[held]))


def test_reward_model_validation() -> None:
    feat, emb, actions, outcomes = synthetic_events(100, seed=4)
    assert feat.dense(emb).shape == (100, 16 + 4)
    with pytest.raises(ValueError, match="'actions'"):
        RewardModel.fit(feat, emb, actions + 4, outcomes, 4)
    with pytest.raises(ValueError, match="'outcomes'"):
        RewardModel.fit(feat, emb, actions, outcomes[:50], 4)
    with pytest.raises(ValueError, match="'propensities'"):
        RewardModel.fit(feat, emb, actions, outcomes, 4, config=RewardModelConfig(weighting="inverse_propensity"))
    with pytest.raises(ValueError, match="'logistic'"):
        RewardModel.fit(feat, emb, actions, outcomes * 2, 4, config=RewardModelConfig(loss="logistic"))
    with pytest.raises(ValueError, match="width"):
        RewardModel.fit(feat, emb[:, :8], actions, outcomes, 4)
    with pytest.raises(ValueError, match="'validation_fraction'"):
        RewardModelConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match="'folds'"):
        cross_fit_predict(feat, emb, actions, outcomes, 4, folds=1)


# -- coverage against exact replay on the real benchmark ---------------------------------------------
N_SEEDS = 40
N_EVENTS = 1500


@dataclass(frozen=True)
class World:
    table: FullInfo
    embeddings: npt.NDArray[np.float32]
    featurizer: Featurizer
    target: npt.NDArray[np.float64]  # (prompts, models): the target policy on every prompt
    true_quality: float
    true_reward: float


def target_policy(
    featurizer: Featurizer, embeddings: npt.NDArray[np.float32], quality: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """A context-dependent stochastic policy over 8 k-means clusters of the embeddings.

    Per cluster, a softmax of each model's mean quality there (scaled by 5) plus a fixed random
    preference table: it leans to the models that are good on that topic, but far from greedily
    (largest importance weight under uniform logging about 8, effective sample size about 38%).
    """
    clusters = featurizer.assign(embeddings)[:, 0]
    per_cluster = np.stack([quality[clusters == c].mean(axis=0) for c in range(8)])
    prefs = 5.0 * per_cluster + np.random.default_rng(2024).normal(scale=0.5, size=per_cluster.shape)
    logits = prefs[clusters]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: npt.NDArray[np.float64] = probs / probs.sum(axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def world(learning_benchmark: Path, embedder: CachedEmbedder) -> World:
    bench = load_benchmark(learning_benchmark)
    catalog = Catalog.from_benchmark(bench)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    assert table.offered.all()
    embeddings = embedder.encode(table.prompts)
    featurizer = Featurizer.fit(embeddings, FeatureConfig(clusters=(8,), seed=0))
    target = target_policy(featurizer, embeddings, table.quality)
    truth = replay_distribution(table, target, "target")
    return World(
        table, embeddings, featurizer, target, truth.quality, reward(truth.quality, truth.cost_usd, PolicyConfig().lam)
    )


def logged_feedback(world: World, seed: int) -> tuple[BanditFeedback, BanditFeedback]:
    """(quality, reward) feedback of ``N_EVENTS`` uniformly logged events, with cross-fitted reward models."""
    table = world.table
    logs = simulate(table, N_EVENTS, seed=seed)
    row_of = {pid: i for i, pid in enumerate(table.prompt_ids)}
    rows = np.array([row_of[p] for p in logs["prompt_id"].to_list()])
    actions = np.array([table.models.index(m) for m in logs["model"].to_list()])
    emb, k = world.embeddings[rows], len(table.models)
    quality, cost = logs["quality"].to_numpy(), logs["cost_usd"].to_numpy()
    config = RewardModelConfig(seed=seed)
    q_hat = cross_fit_predict(world.featurizer, emb, actions, quality, k, config=config)
    c_hat = cross_fit_predict(world.featurizer, emb, actions, cost, k, config=config)
    fb = BanditFeedback(actions, quality, logs["propensity"].to_numpy(), world.target[rows], q_hat)
    scale = PolicyConfig().lam * 1000.0
    return fb, fb.with_outcome(quality - scale * cost, q_hat - scale * c_hat)


def test_intervals_cover_the_exact_replay_truth(world: World) -> None:
    """Over many logging seeds, SNIPS and DR 95% intervals cover the target's true value; DR beats IPS on error."""
    t0 = time.perf_counter()
    results: dict[str, list[Estimate]] = {}
    for seed in range(N_SEEDS):
        quality, reward = logged_feedback(world, seed)
        for outcome, fb in (("quality", quality), ("reward", reward)):
            for name, est in estimate_all(fb).items():
                results.setdefault(f"{outcome}/{name}", []).append(est)
    truths = {"quality": world.true_quality, "reward": world.true_reward}

    def coverage(key: str) -> float:
        return float(np.mean([e.contains(truths[key.split("/")[0]]) for e in results[key]]))

    def mae(key: str) -> float:
        return float(np.mean([abs(e.value - truths[key.split("/")[0]]) for e in results[key]]))

    summary = {key: (round(coverage(key), 3), round(mae(key), 4)) for key in results}
    print(f"\n{N_SEEDS} seeds x {N_EVENTS} events in {time.perf_counter() - t0:.1f}s; truth {truths}")
    print("(coverage, MAE):", summary)
    # the target is far from uniform logging, so this is a real test of the weights
    uniform = replay_distribution(world.table, np.full_like(world.target, 1 / world.target.shape[1]), "uniform")
    assert abs(world.true_quality - uniform.quality) > 0.05
    for outcome in ("quality", "reward"):
        assert coverage(f"{outcome}/snips") >= 0.9, summary
        assert coverage(f"{outcome}/dr") >= 0.9, summary
        assert mae(f"{outcome}/dr") <= mae(f"{outcome}/ips"), summary
        for name in ("snips", "dr"):  # and the intervals cover because they are right, not because they are wide
            estimates = results[f"{outcome}/{name}"]
            spread = np.std([e.value for e in estimates])
            assert np.mean([e.half_width for e in estimates]) / Z95 < 1.5 * spread, summary
