"""Embedding speed of the packaged MiniLM (fp32, torch): single-prompt latency and batch throughput.

Short prompts (~15 tokens) and ~240-token prompts, real MMLU-Pro text. Usage:
    .venv/bin/python benchmarks/embed_speed.py [--threads 1] [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import polars as pl
from _machine import machine, summary

from router_ml import settings
from router_ml.embed import SentenceTransformerEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    prompts = pl.read_parquet(settings.default_benchmark(), columns=["prompt"])["prompt"].unique().sort().to_list()
    long = [p for p in prompts if 900 <= len(p) <= 1000][: args.repeats]  # ~240 tokens at 4 chars per token
    short = [p.split("?")[0][:60] + "?" for p in prompts[: args.repeats]]
    emb = SentenceTransformerEmbedder(threads=args.threads)
    emb.encode(short[:4])  # warm-up
    print(f"machine: {machine()}; torch threads {args.threads}; fp32")
    for name, texts in (("short", short), ("240-token", long)):
        lat = []
        for t in texts:
            t0 = time.perf_counter()
            emb.encode([t])
            lat.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        emb.encode(texts)
        rate = len(texts) / (time.perf_counter() - t0)
        print(f"{name:>10}: single prompt {summary(lat)}; batched {rate:.1f} prompts/s")


if __name__ == "__main__":
    main()
