"""Does the embedder backend change routing quality? Train + exact replay on held-out prompts, per backend.

A slice of the shared benchmark is split 80/20 by a hash of ``prompt_id``; for each seed the same uniformly logged
events on TRAIN train one policy per backend (torch fp32, ONNX fp32, optionally the int8 model that fails the cosine
gate), and each policy is replayed greedily on TEST. Prints quality, cost and the greedy choices' agreement with the
torch policy of the same seed; embeddings go through the project's embedding cache under each backend's own name.
Usage:

    .venv/bin/python benchmarks/backend_quality.py [--prompts 2000] [--seeds 0,1,2] [--int8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _machine import machine, shared_table

from router_ml import settings
from router_ml.cost_model import estimate_tokens
from router_ml.embed import CachedEmbedder, Embedder, EmbedderSpec, EmbeddingCache
from router_ml.encoders import build_embedder
from router_ml.features import FeatureConfig
from router_ml.learn import train_policy
from router_ml.onnx_embed import OnnxEmbedder
from router_ml.policy import PolicyConfig
from router_ml.replay import best_single, replay_choices
from router_ml.simulate import simulate
from router_ml.split import split_by_hash


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000, help="prompts in the slice (first by sorted id)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--events-per-prompt", type=float, default=4.0)
    parser.add_argument("--lam", type=float, default=0.05)
    parser.add_argument("--int8", action="store_true", help="also the int8 ONNX model (fails the cosine gate)")
    args = parser.parse_args()

    catalog, full = shared_table()
    table = full.subset(np.arange(min(args.prompts, len(full.prompts))))
    train_rows, test_rows = split_by_hash(table.prompt_ids, 0.2)
    train, test = table.subset(train_rows), table.subset(test_rows)
    cache = EmbeddingCache(settings.embedding_cache_path())
    encoders: dict[str, Embedder] = {
        "torch": build_embedder(EmbedderSpec("torch"), cache=cache),
        "onnx": build_embedder(EmbedderSpec("onnx"), cache=cache),
    }
    if args.int8:
        encoders["onnx-int8"] = CachedEmbedder(OnnxEmbedder(precision="int8"), cache)
    print(f"machine: {machine()}")
    print(f"slice: {len(table.prompts)} prompts, TRAIN {len(train_rows)} / TEST {len(test_rows)}; lam {args.lam}")
    best = best_single(test)
    print(f"best single model on TEST: {best.router} quality {best.quality:.4f}, ${best.cost_usd * 1000:.4f}/1k\n")
    embedded = {}
    for name, enc in encoders.items():
        t0 = time.perf_counter()
        embedded[name] = (enc.encode(train.prompts, progress=True), enc.encode(test.prompts, progress=True))
        print(f"embedded with {enc.name} in {time.perf_counter() - t0:.1f} s (cache misses only)")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        logs = simulate(train, int(args.events_per_prompt * len(train_rows)), seed=seed)
        choices = {}
        for name, enc in encoders.items():
            policy, _ = train_policy(
                logs, enc, catalog, PolicyConfig(lam=args.lam, seed=seed), FeatureConfig(seed=seed), progress=False
            )
            tokens = [estimate_tokens(p) for p in test.prompts]
            choice = policy.predict_many(embedded[name][1], prompt_tokens=tokens, greedy=True).argmax(axis=1)
            choices[name] = choice
            r = replay_choices(test, choice, name)
            agree = float((choice == choices["torch"]).mean())
            rows.append((seed, name, r.quality, r.cost_usd, agree))
    header = f"{'seed':>4} {'backend':<10} {'quality':>8} {'$ / 1k':>8} {'cost vs best':>12} {'same as torch':>14}"
    print("\n" + header)
    for seed, name, q, c, agree in rows:
        print(f"{seed:>4} {name:<10} {q:>8.4f} {c * 1000:>8.4f} {c / best.cost_usd:>12.1%} {agree:>14.1%}")
    print("\nmean over seeds (delta vs torch):")
    base_q = np.mean([q for _, n, q, _, _ in rows if n == "torch"])
    base_c = np.mean([c for _, n, _, c, _ in rows if n == "torch"])
    for name in encoders:
        q = float(np.mean([r[2] for r in rows if r[1] == name]))
        c = float(np.mean([r[3] for r in rows if r[1] == name]))
        sd = float(np.std([r[2] for r in rows if r[1] == name]))
        print(
            f"  {name:<10} quality {q:.4f} ({q - base_q:+.4f}; seed sd {sd:.4f}), cost ${c * 1000:.4f}/1k "
            f"({(c - base_c) / base_c:+.1%})"
        )


if __name__ == "__main__":
    main()
