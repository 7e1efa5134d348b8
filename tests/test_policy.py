"""The VW policy: distributions in catalog order, learning from propensities, bytes, new models, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog, ModelSpec
from router_ml.embed import EmbedderSpec
from router_ml.features import FeatureConfig, Featurizer
from router_ml.operating import Arm, OperatingPoint
from router_ml.policy import Policy, PolicyConfig
from router_ml.reward import reward

CATALOG = Catalog(
    (
        ModelSpec("alpha", 5.0, 15.0),
        ModelSpec("beta", 0.5, 1.5),
        ModelSpec("gamma", 0.1, 0.3),
        ModelSpec("delta", 1.0, 2.0),
        ModelSpec("eps", 0.2, 0.2),
    )
)

TEST_SPEC = EmbedderSpec("torch", "/models/test", 1)


TOKENS = np.full(1000, 10.0)


def _contexts(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    unit: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


def _policy(x: npt.NDArray[np.float32], **kw: float) -> Policy:
    feats = Featurizer.fit(x, FeatureConfig(clusters=(2, 4), embedding=True, interactions=("cm", "em")))
    return Policy(CATALOG, feats, PolicyConfig(**kw))  # type: ignore[arg-type]


def _teach(policy: Policy, x: npt.NDArray[np.float32], best: str, rounds: int = 2) -> None:
    """Uniform logging where ``best`` always answers correctly and every other model never does."""
    names = policy.catalog.names
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        chosen = [names[int(k)] for k in rng.integers(0, len(names), size=len(x))]
        q = [1.0 if m == best else 0.0 for m in chosen]
        policy.learn_many(
            x, chosen, q, [0.0] * len(x), [1 / len(names)] * len(x), [None] * len(x), prompt_tokens=TOKENS[: len(x)]
        )


def test_distribution_is_in_catalog_order_not_probability_order() -> None:
    x = _contexts(300)
    policy = _policy(x, gamma_scale=50.0)
    _teach(policy, x, best="gamma")
    dist = policy.decide(x[0], np.random.default_rng(0), prompt_tokens=10).distribution
    assert list(dist) == CATALOG.names
    assert max(dist, key=lambda m: dist[m]) == "gamma"
    assert dist["gamma"] > 0.5
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-5)
    probs = policy.predict_many(x[:20], prompt_tokens=10)
    assert probs.shape == (20, 5)
    assert (probs.argmax(axis=1) == CATALOG.index("gamma")).all()


def test_candidates_restrict_the_distribution() -> None:
    x = _contexts(200)
    policy = _policy(x)
    _teach(policy, x, best="gamma")
    dist = policy.decide(x[0], np.random.default_rng(0), ["eps", "delta"], prompt_tokens=10).distribution
    assert dist["alpha"] == dist["beta"] == dist["gamma"] == 0.0
    assert dist["eps"] + dist["delta"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="not in the catalog"):
        policy.decide(x[0], np.random.default_rng(0), ["nope"], prompt_tokens=10)


def test_decisions_record_their_probability() -> None:
    x = _contexts(200)
    policy = _policy(x)
    rng = np.random.default_rng(0)
    d = policy.decide(x[0], rng, prompt_tokens=10)
    assert d.probability == d.distribution[d.model] > 0
    assert d.ranking()[0] == max(d.distribution, key=lambda m: d.distribution[m])


def test_one_learned_policy_serves_every_lam_and_moves_to_the_cheap_model() -> None:
    """VW learns quality; the cost model learns each model's cost from the logged costs; lam is applied when
    deciding. alpha is slightly better and 200x dearer than gamma: lam 0 picks alpha, lam 0.05 gamma."""
    x = _contexts(300)
    names = CATALOG.names
    outcomes = {"alpha": (1.0, 0.02), "gamma": (0.9, 0.0001)}
    policy = _policy(x, gamma_scale=50.0)
    rng = np.random.default_rng(2)
    for _ in range(3):
        chosen = [names[int(k)] for k in rng.integers(0, 5, size=len(x))]
        q = [outcomes.get(m, (0.0, 0.001))[0] for m in chosen]
        c = [outcomes.get(m, (0.0, 0.001))[1] for m in chosen]
        policy.learn_many(x, chosen, q, c, [0.2] * len(x), [None] * len(x), prompt_tokens=TOKENS[: len(x)])
    for lam, expected in ((0.0, "alpha"), (0.05, "gamma")):
        picks = policy.predict_many(x[:30], prompt_tokens=10, lam=lam).argmax(axis=1)
        assert (picks == names.index(expected)).mean() > 0.9, lam
        greedy = policy.greedy_choices(x[:30], [lam], prompt_tokens=10)[0]
        assert np.array_equal(greedy, picks), "greedy choices are the re-priced distribution's best action"
    lams = [0.0, 0.001, 0.01, 0.03, 0.1, 1.0]
    choices = policy.greedy_choices(x[:100], lams, prompt_tokens=10)
    spend = policy.costs.per_1k(np.full(100, 10.0))[np.arange(100), choices].mean(axis=1)
    assert np.all(np.diff(spend) <= 1e-12), "the greedy choice never gets dearer as lam grows"


def test_an_operating_point_mixes_its_arms() -> None:
    x = _contexts(200)
    policy = _policy(x, gamma_scale=50.0)
    _teach(policy, x, best="gamma")
    point = OperatingPoint((Arm(lam=0.0), Arm(model="alpha")), (0.25, 0.75))
    mixed = policy.at(point)
    router = policy.predict_many(x[:10], prompt_tokens=10, lam=0.0)
    served = mixed.predict_many(x[:10], prompt_tokens=10)
    expected = 0.25 * router
    expected[:, CATALOG.index("alpha")] += 0.75
    assert np.allclose(served, expected)
    greedy = mixed.predict_many(x[:10], prompt_tokens=10, greedy=True)
    assert np.allclose(greedy[:, CATALOG.index("gamma")], 0.25) and np.allclose(greedy[:, CATALOG.index("alpha")], 0.75)
    # a fixed model that is not offered gives way to the router
    offered = mixed.predict_many(x[:10], ["beta", "gamma"], prompt_tokens=10)
    assert np.allclose(offered.sum(axis=1), 1.0) and (offered[:, CATALOG.index("alpha")] == 0).all()
    assert policy.operating == OperatingPoint.router(policy.config.lam), "at() returns a copy"


def test_bytes_and_folder_round_trip(tmp_path: Path) -> None:
    x = _contexts(200)
    policy = _policy(x)
    _teach(policy, x, best="beta")
    clone = Policy(CATALOG, policy.featurizer, policy.config, model_bytes=policy.to_bytes(), costs=policy.costs)
    clone.updates = policy.updates
    assert np.allclose(clone.predict_many(x[:50], prompt_tokens=10), policy.predict_many(x[:50], prompt_tokens=10))
    served = policy.at(OperatingPoint((Arm(lam=0.01), Arm(model="beta")), (0.5, 0.5)))
    PolicyArtifact(served, embedder=TEST_SPEC).save(tmp_path / "p")
    loaded = PolicyArtifact.load(tmp_path / "p")
    assert loaded.embedder == TEST_SPEC
    assert loaded.policy.updates == policy.updates == 400
    assert loaded.policy.operating == served.operating and loaded.policy.config.learns == "quality"
    assert np.array_equal(loaded.policy.costs.output_counts, policy.costs.output_counts)
    assert np.allclose(
        loaded.policy.predict_many(x[:50], prompt_tokens=10), served.predict_many(x[:50], prompt_tokens=10)
    )


def test_a_folder_from_before_quality_learning_loads_as_a_reward_model(tmp_path: Path) -> None:
    """Older folders hold a VW model of the reward at their own lam, no cost model and no operating point."""
    x = _contexts(100)
    policy = _policy(x, lam=0.05, learns="reward")  # type: ignore[arg-type]
    _teach(policy, x, best="beta", rounds=1)
    folder = PolicyArtifact(policy, embedder=TEST_SPEC).save(tmp_path / "old")
    meta = json.loads((folder / "policy.json").read_text())
    del meta["config"]["learns"], meta["operating"]
    (folder / "policy.json").write_text(json.dumps(meta))
    (folder / "costs.json").unlink()
    loaded = PolicyArtifact.load(folder).policy
    assert loaded.config.learns == "reward" and loaded.config.learned_lam == 0.05
    assert np.allclose(loaded.predict_many(x[:20], prompt_tokens=10), policy.predict_many(x[:20], prompt_tokens=10))


def test_a_new_catalog_model_is_explored_and_learned_without_retraining() -> None:
    x = _contexts(300)
    policy = _policy(x, gamma_scale=50.0)
    _teach(policy, x, best="beta")
    grown = policy.with_catalog(CATALOG.with_model(ModelSpec("zeta", 0.1, 0.1)))
    before = grown.predict_many(x[:50], prompt_tokens=10)
    assert (before[:, grown.catalog.index("zeta")] > 0).all(), "the newcomer gets explored"
    assert (before.argmax(axis=1) == grown.catalog.index("beta")).mean() > 0.9, "old knowledge is kept"
    names = grown.catalog.names
    rng = np.random.default_rng(5)
    for _ in range(3):
        chosen = [names[int(k)] for k in rng.integers(0, len(names), size=len(x))]
        q = [1.0 if m == "zeta" else (0.5 if m == "beta" else 0.0) for m in chosen]
        grown.learn_many(x, chosen, q, [0.0] * len(x), [1 / 6] * len(x), [None] * len(x), prompt_tokens=TOKENS[:300])
    after = grown.predict_many(x[:50], prompt_tokens=10)
    assert (after.argmax(axis=1) == grown.catalog.index("zeta")).mean() > 0.9


@pytest.mark.parametrize(
    ("model", "quality", "cost", "prop", "cands", "fragment"),
    [
        ("alpha", 1.5, 0.0, 0.2, None, "'quality'"),
        ("alpha", 1.0, -1.0, 0.2, None, "'cost_usd'"),
        ("alpha", 1.0, float("nan"), 0.2, None, "'cost_usd'"),
        ("alpha", 1.0, 0.0, 0.0, None, "'propensity'"),
        ("nope", 1.0, 0.0, 0.2, None, "'model'"),
        ("alpha", 1.0, 0.0, 0.2, ["beta"], "not among the candidates"),
    ],
)
def test_bad_events_are_refused_before_anything_is_learned(
    model: str, quality: float, cost: float, prop: float, cands: list[str] | None, fragment: str
) -> None:
    x = _contexts(50)
    policy = _policy(x)
    _teach(policy, x, best="beta", rounds=1)
    snapshot = policy.to_bytes()
    models = ["beta", model]
    with pytest.raises(ValueError, match=fragment):
        policy.learn_many(
            x[:2], models, [1.0, quality], [0.0, cost], [0.2, prop], [None, cands], prompt_tokens=TOKENS[:2]
        )
    assert policy.to_bytes() == snapshot, "a batch with one bad event changes nothing"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="'lam'"):
        PolicyConfig(lam=-1)
    with pytest.raises(ValueError, match="'exploration'"):
        PolicyConfig(exploration="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interaction"):
        FeatureConfig(interactions=("mm",))
    with pytest.raises(ValueError, match="epsilon"):
        PolicyConfig(exploration="epsilon", learns="quality")
    assert reward(0.8, 0.002, PolicyConfig(lam=0.05).lam) == pytest.approx(0.8 - 0.1)
    assert PolicyConfig(lam=0.05).vw_cost(0.8, 0.002) == pytest.approx(-0.8), "squarecb learns quality"
    assert PolicyConfig(lam=0.05, exploration="epsilon").vw_cost(0.8, 0.002) == pytest.approx(-0.7)


def test_decide_and_learn_matches_decide_then_learn() -> None:
    """The online loop's fused step draws and learns exactly what decide then learn would."""
    x = _contexts(200)
    fused, split = _policy(x, lam=0.05), _policy(x, lam=0.05)
    contexts = fused.featurizer.shared(x)
    quality = np.random.default_rng(3).integers(0, 2, size=(len(x), len(CATALOG))).astype(np.float64)
    cost = np.tile(np.linspace(0.001, 0.01, len(CATALOG)), (len(x), 1))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    cands = ["alpha", "gamma", "eps"]
    for i in range(len(x)):
        offered = cands if i % 3 == 0 else None
        j, p = fused.decide_and_learn(contexts[i], rng_a, quality[i], cost[i], offered, prompt_tokens=10, lam=0.05)
        d = split.decide(contexts[i], rng_b, offered, prompt_tokens=10, lam=0.05)
        assert (CATALOG.names[j], p) == (d.model, d.probability)
        split.learn(contexts[i], d.model, quality[i, j], cost[i, j], d.probability, offered, prompt_tokens=10)
    assert fused.updates == split.updates == len(x)
    assert fused.to_bytes() == split.to_bytes()
    with pytest.raises(ValueError, match="quality in"):
        fused.decide_and_learn(contexts[0], rng_a, np.full(len(CATALOG), 2.0), cost[0], prompt_tokens=10, lam=0.05)
