"""A real VW policy learns from simulated bandit logs and beats random routing on held-out prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.embed import CachedEmbedder
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import train_policy
from router_ml.policy import PolicyConfig
from router_ml.replay import replay_choices, replay_distribution
from router_ml.reward import reward
from router_ml.simulate import simulate
from router_ml.split import split_by_hash


def test_policy_beats_random_on_held_out_prompts(learning_benchmark: Path, embedder: CachedEmbedder) -> None:
    bench = load_benchmark(learning_benchmark)
    catalog = Catalog.from_benchmark(bench)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    train_rows, test_rows = split_by_hash(table.prompt_ids, 0.25)
    train, test = table.subset(train_rows), table.subset(test_rows)
    logs = simulate(train, 12 * len(train_rows), seed=0)
    logs = logs.with_columns(logs["quality"].scatter([0, 1, 2], None))  # three ungraded events
    config = PolicyConfig(lam=0.05)
    policy, report = train_policy(logs, embedder, catalog, config, FeatureConfig(clusters=(4, 16)), progress=False)
    assert report.n_ungraded == 3
    assert report.n_events == logs.height - 3

    tokens = [estimate_tokens(p) for p in test.prompts]
    probs = policy.predict_many(embedder.encode(test.prompts), prompt_tokens=tokens)
    learned = replay_choices(test, probs.argmax(axis=1), "policy")
    uniform = replay_distribution(test, np.full_like(probs, 1 / len(catalog)), "uniform")

    assert learned.quality > uniform.quality + 0.15, (learned, uniform)
    lam = config.lam
    assert reward(learned.quality, learned.cost_usd, lam) > reward(uniform.quality, uniform.cost_usd, lam) + 0.15
    # the progressive (before-learning) estimate is an honest number between random and the final policy
    low, high = reward(uniform.quality, uniform.cost_usd, lam), reward(learned.quality, learned.cost_usd, lam)
    assert low - 0.05 < report.progressive_reward < high + 0.1
