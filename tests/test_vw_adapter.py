"""vw-next's private fast path and its public API give the same models; only the adapter touches vw-next."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router_ml.catalog import Catalog, ModelSpec
from router_ml.features import FeatureConfig, Featurizer
from router_ml.policy import Policy, PolicyConfig

ROOT = Path(__file__).resolve().parents[1]
CATALOG = Catalog(tuple(ModelSpec(name, price, 3 * price) for name, price in [("a", 5.0), ("b", 0.5), ("c", 0.1)]))


def _pair(x: npt.NDArray[np.float32], config: PolicyConfig) -> tuple[Policy, Policy]:
    feats = Featurizer.fit(x, FeatureConfig(clusters=(2, 4), embedding=True, interactions=("cm", "em")))
    fast, public = Policy(CATALOG, feats, config, fast=True), Policy(CATALOG, feats, config, fast=False)
    assert fast.vw.fast and not public.vw.fast
    return fast, public


def test_the_fast_and_the_public_path_learn_the_same_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    quality = rng.integers(0, 2, size=(len(x), len(CATALOG))).astype(np.float64)
    cost = np.tile([0.01, 0.001, 0.0002], (len(x), 1))
    for config in (PolicyConfig(seed=1), PolicyConfig(exploration="epsilon", seed=2)):
        fast, public = _pair(x, config)
        contexts = [p.featurizer.shared(x) for p in (fast, public)]
        draws = [np.random.default_rng(3), np.random.default_rng(3)]
        for i in range(len(x)):
            offered = ["a", "c"] if i % 4 == 0 else None
            if config.exploration == "squarecb":  # the online loop's fused step
                steps = [
                    p.decide_and_learn(ctx[i], r, quality[i], cost[i], offered, prompt_tokens=20, lam=0.02)
                    for p, ctx, r in zip((fast, public), contexts, draws)
                ]
                assert steps[0] == steps[1]
            else:  # decide, then learn from the outcome
                decisions = [p.decide(x[i], r, offered, prompt_tokens=20) for p, r in zip((fast, public), draws)]
                assert decisions[0] == decisions[1]
                j = CATALOG.index(decisions[0].model)
                for p in (fast, public):
                    p.learn(
                        x[i],
                        decisions[0].model,
                        quality[i, j],
                        cost[i, j],
                        decisions[0].probability,
                        offered,
                        prompt_tokens=20,
                    )
        assert fast.to_bytes() == public.to_bytes()
        assert np.array_equal(fast.vw.weights(), public.vw.weights())
        tokens = np.full(len(x), 20.0)
        assert np.array_equal(fast.predict_many(x, prompt_tokens=tokens), public.predict_many(x, prompt_tokens=tokens))
        models = [CATALOG.names[i % 3] for i in range(len(x))]
        before = [
            p.learn_many(x, models, quality[:, 0], cost[:, 0], [0.3] * len(x), [None] * len(x), prompt_tokens=tokens)
            for p in (fast, public)
        ]
        assert np.array_equal(before[0], before[1]) and fast.to_bytes() == public.to_bytes()
        assert fast.copy().vw.fast and not public.copy().vw.fast, "a copy keeps its path"


def test_only_the_adapter_imports_vw_next() -> None:
    importers = []
    for folder in ("router_ml", "training", "serve", "benchmarks", "tests", "notebooks"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n.split(".")[0] == "vowpal_wabbit_next" for n in names):
                    importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["router_ml/vw_adapter.py"]
