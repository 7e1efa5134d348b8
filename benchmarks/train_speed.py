"""``router-ml train``'s learning path on 100k logged events, with a warm embedding cache.

Simulates uniformly logged events from the shared benchmark, writes them to Parquet, then times what ``train`` does
before registering: load and validate the logs, look the prompts up in the embedding cache (warmed first, so the
first embedding of a prompt is not counted), fit the k-means features and learn every event in VW. Prints events/s
for the learning step (as ``train`` reports it) and for the whole path, against the 20k events/s target, and a
cProfile top-N of where the time goes. ``--blas-threads 1`` limits the OpenBLAS/OpenMP pools that k-means and the
cluster assignment use (two such threads collapse on a shared 2-core machine, as torch's do). Usage:

    .venv/bin/python benchmarks/train_speed.py [--events 100000] [--repeats 2] [--top 20] [--blas-threads 1]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine
from threadpoolctl import threadpool_info, threadpool_limits

from router_ml import settings
from router_ml.contracts import load_benchmark, load_logs
from router_ml.embed import EmbedderSpec, EmbeddingCache
from router_ml.encoders import build_embedder
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import train_policy
from router_ml.policy import PolicyConfig
from router_ml.simulate import simulate
from training.pipelines import catalog_for_benchmark

TARGET = 20_000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--backend", default="torch", help="embedder backend whose cache is used")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit OpenBLAS/OpenMP threads (k-means, numpy) with threadpoolctl; default: leave them as they are",
    )
    args = parser.parse_args()
    if args.blas_threads is not None:
        threadpool_limits(args.blas_threads)

    path = settings.default_benchmark()
    bench = load_benchmark(path)
    catalog = catalog_for_benchmark(path, bench, None)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    print(f"machine: {machine()}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())
    print(f"native thread pools: {pools}")
    with tempfile.TemporaryDirectory() as tmp:
        logs_path = Path(tmp) / "logs.parquet"
        simulate(table, args.events, seed=0).write_parquet(logs_path)
        t0 = time.perf_counter()
        logs = load_logs(logs_path)
        load_s = time.perf_counter() - t0
    embedder = build_embedder(EmbedderSpec(args.backend), cache=EmbeddingCache(settings.embedding_cache_path()))
    prompts = logs["prompt"].to_list()
    t0 = time.perf_counter()
    embedder.encode(prompts, progress=True)  # warms the cache: not counted
    print(
        f"{logs.height} events over {len(set(prompts))} prompts, {len(catalog)} models; embedder {embedder.name}; "
        f"cache warm-up {time.perf_counter() - t0:.1f} s (not counted)\n"
        f"load + validate the Parquet logs: {load_s:.2f} s ({logs.height / load_s:,.0f} events/s)"
    )
    learn, whole, embed_s, fit_s = [], [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        _, report = train_policy(logs, embedder, catalog, PolicyConfig(seed=r), FeatureConfig(), progress=False)
        total = time.perf_counter() - t0
        learn.append(report.events_per_second)
        whole.append(report.n_events / (total + load_s))
        embed_s.append(report.embed_seconds)
        fit_s.append(total - report.embed_seconds - report.learn_seconds)
    rate = float(np.median(learn))
    verdict = "meets" if rate >= TARGET else f"MISSES by {TARGET / rate:.2f}x ({TARGET - rate:,.0f} events/s short)"
    print(
        f"learning (VW updates, as `train` reports it): median {rate:,.0f} events/s over {args.repeats} runs -> "
        f"{verdict} the {TARGET:,.0f} events/s target\n"
        f"whole path (load + cached embeddings {np.median(embed_s):.2f} s + k-means fit {np.median(fit_s):.2f} s + "
        f"learning): median {np.median(whole):,.0f} events/s"
    )
    prof = cProfile.Profile()
    prof.enable()
    train_policy(logs, embedder, catalog, PolicyConfig(), FeatureConfig(), progress=False)
    prof.disable()
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(args.top)
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        print(f"\ncProfile of train_policy (under the profiler, slower), top {args.top} by {key}:")
        print("\n".join("  " + ln for ln in lines[start:]))


if __name__ == "__main__":
    main()
