"""Day one on the shared MMLU-Pro benchmark: an empty policy over four frontier models (`router-ml init`, default
gpt-4o, exploration share 0.1) serves a simulated stream graded by the benchmark and learns from each grade, the way
the service does (router_ml.day_one_stream). Prints, after 1k, 5k and 20k graded requests (mean and sd over seeds),
the policy's replayed quality and cost on the held-out TEST prompts against always-the-default and the single-model
hull at the same cost, and the exploration spend. Usage:
    .venv/bin/python benchmarks/day_one.py [--seeds 3] [--checkpoints 1000 5000 20000] [--lam 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from router_ml import settings
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.day_one import DayOnePrior
from router_ml.day_one_stream import FRONTIER, Checkpoint, run_stream, split_tables
from router_ml.embed import EmbedderSpec
from router_ml.encoders import Embedders
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.policy import PolicyConfig
from training.day_one import day_one_policy
from training.pipelines import catalog_for_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--lam", type=float, default=0.05)
    ap.add_argument("--explore-share", type=float, default=0.1)
    ap.add_argument("--explore-budget-usd-per-1k", type=float, default=None)
    ap.add_argument("--models", nargs="+", default=list(FRONTIER), help="the day-one catalog (benchmark models)")
    ap.add_argument("--default", default=None, help="the default model (default: the first of --models)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    models = tuple(args.models)
    args.default = args.default or models[0]
    bench = load_benchmark(args.benchmark)
    full = catalog_for_benchmark(args.benchmark, bench, None)
    catalog = Catalog(tuple(full.spec(m) for m in models))
    table = FullInfo.from_benchmark(_only(bench, models), models=catalog.names)
    embedder = Embedders(cache_path=settings.embedding_cache_path()).get(EmbedderSpec())
    split = split_tables(table, lambda texts: embedder.encode(texts, progress=True))
    runs: list[list[Checkpoint]] = []
    for seed in range(args.seeds):
        prior = DayOnePrior(
            default=args.default,
            explore_share=args.explore_share,
            explore_budget_usd_per_1k=args.explore_budget_usd_per_1k,
        )
        policy = day_one_policy(
            catalog, prior, PolicyConfig(lam=args.lam, seed=seed), FeatureConfig(seed=seed), embedder.dim
        )
        runs.append(
            run_stream(
                policy, split.train, split.train_embeddings, split.test, split.test_embeddings, args.checkpoints,
                seed=seed,
            )
        )
        print(f"seed {seed}: trusted after the stream: {runs[-1][-1].trusted}", flush=True)
    first = runs[0][0]
    print(f"\n{machine()}; {time.perf_counter() - t0:.0f} s; {args.seeds} seeds; lam {args.lam}; "
          f"{len(split.train.prompts)} TRAIN / {len(split.test.prompts)} TEST prompts; catalog {', '.join(models)}")
    print(f"always {args.default} on TEST: quality {first.default_quality:.4f}, ${first.default_cost_per_1k:.3f} "
          "per 1k requests")
    print("graded | quality (x default) | cost (x default) | margin over hull | explored share | "
          "exploration $/1k | trusted")
    for k in range(len(runs[0])):
        rows = [r[k] for r in runs]

        def ms(values: list[float], fmt: str = ".4f") -> str:
            return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt}}"

        print(
            f"{rows[0].graded:>6} | {ms([r.quality / r.default_quality for r in rows])} | "
            f"{ms([r.cost_per_1k / r.default_cost_per_1k for r in rows])} | "
            f"{ms([r.quality - r.hull_quality for r in rows])} | {ms([r.explored_share for r in rows], '.3f')} | "
            f"{ms([r.explore_spend_per_1k for r in rows], '.3f')} | {sum(r.trusted for r in rows)}/{len(rows)}"
        )


def _only(frame: pl.DataFrame, models: tuple[str, ...]) -> pl.DataFrame:
    return frame.filter(pl.col("model").is_in(list(models)))


if __name__ == "__main__":
    main()
