"""Policy speed with the real features (31 models, clusters 8/32/128 x model id): predict, learn, online loop.

Embeddings are random unit vectors of MiniLM's width, so only VW and feature building are timed. Usage:
    .venv/bin/python benchmarks/policy_speed.py [--events 20000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _machine import machine, summary

from router_ml import settings
from router_ml.catalog import Catalog
from router_ml.features import FeatureConfig, Featurizer
from router_ml.policy import Policy, PolicyConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    catalog = Catalog.load(settings.default_catalog())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.events, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    featurizer = Featurizer.fit(x[:2000], FeatureConfig())
    names = catalog.names
    models = [names[i % len(names)] for i in range(args.events)]
    quality = rng.integers(0, 2, size=args.events).astype(np.float64)
    cost = np.full(args.events, 1e-4)
    props = np.full(args.events, 1 / len(names))
    print(f"machine: {machine()}; {len(names)} actions; {args.events} events x {args.repeats} repeats")
    learn_rates, predict_rates, decide_ms = [], [], []
    for r in range(args.repeats):
        policy = Policy(catalog, featurizer, PolicyConfig(seed=r))
        t0 = time.perf_counter()
        tokens = np.full(args.events, 100.0)
        policy.learn_many(x, models, quality, cost, props, [None] * args.events, prompt_tokens=tokens)
        learn_rates.append(args.events / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        policy.predict_many(x, prompt_tokens=tokens)
        predict_rates.append(args.events / (time.perf_counter() - t0))
        contexts = featurizer.shared(x[:1000])
        for ctx in contexts:
            t0 = time.perf_counter()
            policy.decide(ctx, rng, prompt_tokens=100.0)
            decide_ms.append((time.perf_counter() - t0) * 1000)
    print(f"learn (logged events): median {np.median(learn_rates):,.0f} events/s")
    print(f"predict (full distribution): median {np.median(predict_rates):,.0f} prompts/s")
    print(f"decide on a precomputed context: {summary(decide_ms)}")


if __name__ == "__main__":
    main()
