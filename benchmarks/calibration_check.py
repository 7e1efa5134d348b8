"""Calibration from logs against the truth: uniform logs of a benchmark's TRAIN split, `train --target`, replay on TEST.

For each seed: simulate uniformly logged traffic on TRAIN (``--events-per-prompt`` per prompt), calibrate a policy to
the target on those logs alone (what `router-ml train --logs F --target T` does: doubly robust estimates on held-out
folds), then replay its operating point exactly on TEST. Prints, per seed and as mean ± sd: the TEST quality as a
fraction of the reference's, the cost as a fraction of its cost, and whether the interval the calibration printed
for *router minus reference* quality holds the replayed TEST difference.

    .venv/bin/python benchmarks/calibration_check.py --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine

from router_ml import settings
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.embed import EmbedderSpec
from router_ml.encoders import Embedders
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.operating import Target
from router_ml.policy import PolicyConfig
from router_ml.registry import PolicyRegistry
from router_ml.replay import replay_distribution
from router_ml.simulate import simulate
from router_ml.split import TEST_FRACTION, split_by_hash
from training.pipelines import catalog_for_benchmark, run_train, write_parquet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    p.add_argument("--target", default="parity")
    p.add_argument("--events-per-prompt", type=float, default=12.0)
    p.add_argument("--seeds", default="1,2,3")
    args = p.parse_args()
    target = Target.parse(args.target)
    bench = load_benchmark(args.benchmark)
    catalog = catalog_for_benchmark(args.benchmark, bench, None)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    train_rows, test_rows = split_by_hash(table.prompt_ids, TEST_FRACTION)
    train, test = table.subset(train_rows), table.subset(test_rows)
    embedder = Embedders(cache_path=settings.embedding_cache_path()).get(EmbedderSpec())
    test_emb = embedder.encode(test.prompts, progress=True)
    tokens = [estimate_tokens(p) for p in test.prompts]
    print(f"machine: {machine()}; {args.benchmark.name}: {len(train.prompts)} TRAIN / {len(test.prompts)} TEST prompts")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            logs = Path(tmp) / "logs.parquet"
            write_parquet(simulate(train, round(args.events_per_prompt * len(train.prompts)), seed=seed), logs)
            outcome = run_train(
                logs,
                catalog=catalog,
                config=PolicyConfig(seed=seed),
                features=FeatureConfig(seed=seed),
                passes=1,
                embedder=embedder,
                registry=PolicyRegistry(f"sqlite:///{tmp}/mlflow.db"),
                target=target,
                progress=False,
            )
        cal = outcome.calibration
        assert cal is not None
        ref = catalog.names.index(cal.reference)
        ref_q, ref_c = float(np.nanmean(test.quality[:, ref])), float(np.nanmean(test.cost[:, ref]))
        greedy = outcome.policy.predict_many(test_emb, prompt_tokens=tokens, greedy=True)
        r = replay_distribution(test, greedy, "calibrated")
        diff = r.quality - ref_q
        covered = cal.quality_diff.low <= diff <= cal.quality_diff.high
        rows.append((r.quality / ref_q, r.cost_usd / ref_c, covered))
        print(
            f"seed {seed} ({time.perf_counter() - t0:.0f} s): {cal.point.label}; estimated difference "
            f"{cal.quality_diff.value:+.4f} [{cal.quality_diff.low:+.4f}, {cal.quality_diff.high:+.4f}]; "
            f"TEST: quality {r.quality:.4f} = {r.quality / ref_q:.3f} of {cal.reference}, difference {diff:+.4f} "
            f"({'inside' if covered else 'OUTSIDE'} the interval), cost {r.cost_usd / ref_c:.3f} of its cost",
            flush=True,
        )
    arr = np.array([(q, c) for q, c, _ in rows])
    print(
        f"\n{args.target} over {len(rows)} seeds: TEST quality {arr[:, 0].mean():.3f} ± {arr[:, 0].std():.3f} of the "
        f"reference's, cost {arr[:, 1].mean():.3f} ± {arr[:, 1].std():.3f} of its cost; the printed interval held "
        f"the TEST difference in {sum(c for *_, c in rows)} of {len(rows)} seeds"
    )


if __name__ == "__main__":
    main()
