"""In-process routing latency: one ``Router.route`` call (embed + featurize + policy decide) per prompt.

For each embedder backend (torch fp32, ONNX fp32; ``--int8`` adds the int8 model that fails the cosine gate) a
policy is trained on a small slice of the shared benchmark (uniformly logged events, default features), then routes
held-out prompts it never saw, one at a time, with no embedding cache: short questions (~15-20 tokens) and whole
~240-token prompts. Prints p50/p99 per backend against the targets (p50 <= 5 ms short, <= 15 ms for 240 tokens on
2 cores), the process CPU time (steadier on a shared machine), the split between embedding and the policy, and for
every missed target by how much plus a cProfile top-N of the route call. Usage:

    .venv/bin/python benchmarks/route_speed.py [--backends torch,onnx] [--train-prompts 400] [--repeats 100]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time

import numpy as np
from _machine import machine, shared_table, summary

from router_ml import settings
from router_ml.cost_model import estimate_tokens
from router_ml.embed import CachedEmbedder, Embedder, EmbedderSpec, EmbeddingCache
from router_ml.encoders import build_embedder
from router_ml.features import FeatureConfig
from router_ml.learn import train_policy
from router_ml.onnx_embed import OnnxEmbedder
from router_ml.policy import PolicyConfig
from router_ml.router import Router
from router_ml.simulate import simulate

TARGETS_MS = {"short": 5.0, "240-token": 15.0}


def profile_top(router: Router, texts: list[str], top: int) -> str:
    rng = np.random.default_rng(1)
    prof = cProfile.Profile()
    prof.enable()
    for t in texts:
        router.route(t, rng)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join("      " + ln for ln in lines[start:])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--threads", type=int, default=None, help="embedder threads (default: each backend's own)")
    parser.add_argument("--train-prompts", type=int, default=400)
    parser.add_argument("--events-per-prompt", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=100, help="prompts routed per length")
    parser.add_argument("--top", type=int, default=15, help="profile lines per missed target")
    parser.add_argument("--int8", action="store_true", help="also the int8 ONNX model (fails the cosine gate)")
    args = parser.parse_args()

    catalog, table = shared_table()
    n_train = args.train_prompts
    train = table.subset(np.arange(n_train))
    logs = simulate(train, n_train * args.events_per_prompt, seed=0)
    held_out = table.prompts[n_train:]
    print(f"machine: {machine()}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"policy: {len(catalog)} models, trained on {logs.height} events over {n_train} prompts; default features\n")
    cache = EmbeddingCache(settings.embedding_cache_path())
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] + (["onnx-int8"] if args.int8 else [])
    for backend in backends:
        enc: Embedder = (
            OnnxEmbedder(threads=args.threads, precision="int8")
            if backend == "onnx-int8"
            else build_embedder(EmbedderSpec(backend), threads=args.threads)
        )
        policy, _ = train_policy(
            logs, CachedEmbedder(enc, cache), catalog, PolicyConfig(), FeatureConfig(), progress=False
        )
        router = Router(policy, enc)  # no cache in front: every routed prompt is new
        lengths = getattr(enc, "token_lengths", None)
        short = [p.split("?")[0][:60] + "?" for p in held_out[: args.repeats]]
        if lengths is not None:
            n_tok = lengths(held_out)
            long = [p for p, k in zip(held_out, n_tok) if 230 <= k <= 250][: args.repeats]
        else:
            long = [p for p in held_out if 900 <= len(p) <= 1000][: args.repeats]
        threads = getattr(enc, "threads", None) or args.threads or 1
        print(f"{enc.name} ({backend}, {threads} thread(s)):")
        rng = np.random.default_rng(0)
        for t in short[:5]:
            router.route(t, rng)  # warm-up
        for label, texts in (("short", short), ("240-token", long)):
            route_ms, route_cpu, embed_ms, decide_ms = [], [], [], []
            for t in texts:
                c0, t0 = time.process_time(), time.perf_counter()
                router.route(t, rng)
                route_ms.append((time.perf_counter() - t0) * 1000)
                route_cpu.append((time.process_time() - c0) * 1000)
            for t in texts:
                t0 = time.perf_counter()
                e = enc.encode([t])[0]
                t1 = time.perf_counter()
                policy.decide(e, rng, prompt_tokens=estimate_tokens(t))
                embed_ms.append((t1 - t0) * 1000)
                decide_ms.append((time.perf_counter() - t1) * 1000)
            p50 = float(np.percentile(route_ms, 50))
            target = TARGETS_MS[label]
            verdict = "meets" if p50 <= target else f"MISSES by {p50 - target:.1f} ms ({p50 / target:.1f}x)"
            print(
                f"  route {label:>9}: {summary(route_ms)}; cpu p50 {np.median(route_cpu):.2f} ms (all threads) "
                f"-> {verdict} the p50 <= {target:.0f} ms target"
            )
            share = np.median(embed_ms) / (np.median(embed_ms) + np.median(decide_ms))
            print(
                f"      of which embed p50 {np.median(embed_ms):.2f} ms, featurize+decide p50 "
                f"{np.median(decide_ms):.3f} ms (embedding {share:.1%} of the call)"
            )
            if p50 > target:
                print(f"      cProfile of {min(30, len(texts))} route calls, top {args.top} by own time:")
                print(profile_top(router, texts[:30], args.top))
        print()


if __name__ == "__main__":
    main()
