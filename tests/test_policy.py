"""The VW policy: distributions in catalog order, learning from propensities, bytes, new models, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog, ModelSpec
from router_ml.features import FeatureConfig, Featurizer
from router_ml.policy import Policy, PolicyConfig

CATALOG = Catalog(
    (
        ModelSpec("alpha", 5.0, 15.0),
        ModelSpec("beta", 0.5, 1.5),
        ModelSpec("gamma", 0.1, 0.3),
        ModelSpec("delta", 1.0, 2.0),
        ModelSpec("eps", 0.2, 0.2),
    )
)


def _contexts(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


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
        policy.learn_many(x, chosen, q, [0.0] * len(x), [1 / len(names)] * len(x), [None] * len(x))


def test_distribution_is_in_catalog_order_not_probability_order() -> None:
    x = _contexts(300)
    policy = _policy(x, gamma_scale=50.0)
    _teach(policy, x, best="gamma")
    dist = policy.predict_one(x[0])
    assert list(dist) == CATALOG.names
    assert max(dist, key=lambda m: dist[m]) == "gamma"
    assert dist["gamma"] > 0.5
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-5)
    probs = policy.predict_many(x[:20])
    assert probs.shape == (20, 5)
    assert (probs.argmax(axis=1) == CATALOG.index("gamma")).all()


def test_candidates_restrict_the_distribution() -> None:
    x = _contexts(200)
    policy = _policy(x)
    _teach(policy, x, best="gamma")
    dist = policy.predict_one(x[0], candidates=["eps", "delta"])
    assert dist["alpha"] == dist["beta"] == dist["gamma"] == 0.0
    assert dist["eps"] + dist["delta"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="not in the catalog"):
        policy.predict_one(x[0], candidates=["nope"])


def test_decisions_record_their_probability() -> None:
    x = _contexts(200)
    policy = _policy(x)
    rng = np.random.default_rng(0)
    d = policy.decide(x[0], rng)
    assert d.probability == d.distribution[d.model] > 0
    assert d.ranking()[0] == max(d.distribution, key=lambda m: d.distribution[m])


def test_cost_penalty_moves_the_choice_to_the_cheap_model() -> None:
    x = _contexts(300)
    names = CATALOG.names
    outcomes = {"alpha": (1.0, 0.02), "gamma": (0.9, 0.0001)}  # alpha: slightly better, 200x dearer
    for lam, expected in ((0.0, "alpha"), (0.05, "gamma")):
        policy = _policy(x, lam=lam, gamma_scale=50.0)
        rng = np.random.default_rng(2)
        for _ in range(3):
            chosen = [names[int(k)] for k in rng.integers(0, 5, size=len(x))]
            q = [outcomes.get(m, (0.0, 0.001))[0] for m in chosen]
            c = [outcomes.get(m, (0.0, 0.001))[1] for m in chosen]
            policy.learn_many(x, chosen, q, c, [0.2] * len(x), [None] * len(x))
        assert (policy.predict_many(x[:30]).argmax(axis=1) == names.index(expected)).mean() > 0.9, lam


def test_bytes_and_folder_round_trip(tmp_path: Path) -> None:
    x = _contexts(200)
    policy = _policy(x)
    _teach(policy, x, best="beta")
    clone = Policy(CATALOG, policy.featurizer, policy.config, model_bytes=policy.model_bytes())
    assert np.allclose(clone.predict_many(x[:50]), policy.predict_many(x[:50]))
    PolicyArtifact(policy, embedder="test@1").save(tmp_path / "p")
    loaded = PolicyArtifact.load(tmp_path / "p")
    assert loaded.embedder == "test@1"
    assert loaded.policy.updates == policy.updates == 400
    assert np.allclose(loaded.policy.predict_many(x[:50]), policy.predict_many(x[:50]))


def test_a_new_catalog_model_is_explored_and_learned_without_retraining() -> None:
    x = _contexts(300)
    policy = _policy(x, gamma_scale=50.0)
    _teach(policy, x, best="beta")
    grown = policy.with_catalog(CATALOG.with_model(ModelSpec("zeta", 0.1, 0.1)))
    before = grown.predict_many(x[:50])
    assert (before[:, grown.catalog.index("zeta")] > 0).all(), "the newcomer gets explored"
    assert (before.argmax(axis=1) == grown.catalog.index("beta")).mean() > 0.9, "old knowledge is kept"
    names = grown.catalog.names
    rng = np.random.default_rng(5)
    for _ in range(3):
        chosen = [names[int(k)] for k in rng.integers(0, len(names), size=len(x))]
        q = [1.0 if m == "zeta" else (0.5 if m == "beta" else 0.0) for m in chosen]
        grown.learn_many(x, chosen, q, [0.0] * len(x), [1 / 6] * len(x), [None] * len(x))
    after = grown.predict_many(x[:50])
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
    snapshot = policy.model_bytes()
    models = ["beta", model]
    with pytest.raises(ValueError, match=fragment):
        policy.learn_many(x[:2], models, [1.0, quality], [0.0, cost], [0.2, prop], [None, cands])
    assert policy.model_bytes() == snapshot, "a batch with one bad event changes nothing"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="'lam'"):
        PolicyConfig(lam=-1)
    with pytest.raises(ValueError, match="'exploration'"):
        PolicyConfig(exploration="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interaction"):
        FeatureConfig(interactions=("mm",))
    assert PolicyConfig(lam=0.05).reward(0.8, 0.002) == pytest.approx(0.8 - 0.1)


def test_decide_and_learn_matches_decide_then_learn() -> None:
    """The online loop's fused step draws and learns exactly what decide_context + learn_context would."""
    x = _contexts(200)
    fused, split = _policy(x, lam=0.05), _policy(x, lam=0.05)
    contexts = fused.featurizer.shared(x)
    quality = np.random.default_rng(3).integers(0, 2, size=(len(x), len(CATALOG))).astype(np.float64)
    cost = np.tile(np.linspace(0.001, 0.01, len(CATALOG)), (len(x), 1))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    cands = ["alpha", "gamma", "eps"]
    for i in range(len(x)):
        offered = cands if i % 3 == 0 else None
        j, p = fused.decide_and_learn(contexts[i], rng_a, quality[i], cost[i], offered)
        d = split.decide_context(contexts[i], rng_b, offered)
        assert (CATALOG.names[j], p) == (d.model, d.probability)
        split.learn_context(contexts[i], d.model, quality[i, j], cost[i, j], d.probability, offered)
    assert fused.updates == split.updates == len(x)
    assert fused.model_bytes() == split.model_bytes()
    with pytest.raises(ValueError, match="quality in"):
        fused.decide_and_learn(contexts[0], rng_a, np.full(len(CATALOG), 2.0), cost[0])
