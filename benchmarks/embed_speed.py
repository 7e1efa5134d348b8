"""Embedding speed and fidelity: sentence-transformers on torch (fp32) against the ONNX Runtime embedder.

Real MMLU-Pro text. For each backend: single-prompt latency p50/p99 of short (~15-20 tokens) and ~240-token prompts,
batched throughput of ~240-token prompts with no embedding cache, and (ONNX) the cosine to torch fp32 over >= 500
real prompts, short and long. ``--int8`` also builds and measures the dynamically quantised int8 model (it fails the
0.999 cosine gate, which is why it is not a backend). ``--threads-check`` times 1 vs 2 ONNX intra-op threads, quiet
and beside a competing busy process, with and without spinning threads. Timings are wall clock; on a shared machine
the process CPU time per prompt is printed too (``cpu``), which is much less sensitive to other load. Usage:

    .venv/bin/python benchmarks/embed_speed.py [--repeats 60] [--cosine-prompts 600] [--int8] [--threads-check]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
from _machine import machine, summary

from router_ml import settings
from router_ml.embed import Embedder, Matrix
from router_ml.onnx_embed import OnnxEmbedder, onnx_threads
from router_ml.torch_embed import SentenceTransformerEmbedder

TARGET_BATCH = 60.0  # prompts/s, 240-token prompts, cold


def load_prompts() -> list[str]:
    return pl.read_parquet(settings.default_benchmark(), columns=["prompt"])["prompt"].unique().sort().to_list()


def prompt_sets(prompts: list[str], lengths: list[int], n: int) -> tuple[list[str], list[str]]:
    """``n`` short questions (~15-20 tokens) and ``n`` whole prompts of 230-250 tokens."""
    short = [p.split("?")[0][:60] + "?" for p in prompts[:n]]
    long = [p for p, k in zip(prompts, lengths) if 230 <= k <= 250][:n]
    return short, long


def latency(encode: Callable[[Sequence[str]], Matrix], texts: list[str]) -> tuple[list[float], list[float]]:
    """Per-prompt wall and CPU milliseconds of embedding one prompt at a time."""
    wall, cpu = [], []
    for t in texts:
        c0, t0 = time.process_time(), time.perf_counter()
        encode([t])
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def throughput(encode: Callable[[Sequence[str]], Matrix], texts: list[str], repeats: int = 3) -> tuple[float, float]:
    """Median prompts/s of embedding ``texts`` in one call (wall, and per CPU-second)."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        encode(texts)
        wall.append(len(texts) / (time.perf_counter() - t0))
        cpu.append(len(texts) / max(time.process_time() - c0, 1e-9))
    return float(np.median(wall)), float(np.median(cpu))


def report_speed(label: str, emb: Embedder, short: list[str], long: list[str]) -> dict[str, float]:
    emb.encode(short[:4])  # warm-up: first-run allocations
    out: dict[str, float] = {}
    for name, texts in (("short", short), ("240-token", long)):
        wall, cpu = latency(emb.encode, texts)
        out[f"{name}_p50"] = float(np.percentile(wall, 50))
        out[f"{name}_cpu_p50"] = float(np.percentile(cpu, 50))
        print(f"  {label:<12} {name:>9} single prompt: {summary(wall)}; cpu p50 {np.percentile(cpu, 50):.2f} ms")
    rate, cpu_rate = throughput(emb.encode, long)
    out["batch"], out["batch_cpu"] = rate, cpu_rate
    verdict = "meets" if rate >= TARGET_BATCH else f"misses by {TARGET_BATCH / rate:.1f}x"
    print(
        f"  {label:<12} 240-token batched (cold, {len(long)} prompts): {rate:.1f} prompts/s wall ({verdict} the "
        f"{TARGET_BATCH:.0f}/s target), {cpu_rate:.1f} prompts per CPU-second (all threads)"
    )
    return out


def cosine_table(label: str, x: Matrix, ref: Matrix, lengths: np.ndarray) -> None:
    cos = (x * ref).sum(axis=1)
    parts = []
    for name, mask in (
        ("<=64 tok", lengths <= 64),
        ("65-192", (lengths > 64) & (lengths <= 192)),
        (">192", lengths > 192),
        ("all", np.ones_like(lengths, dtype=bool)),
    ):
        c = cos[mask]
        parts.append(f"{name} (n={c.size}): min {c.min():.5f} median {np.median(c):.5f}")
    gate = "holds" if cos.min() >= 0.999 else "FAILS"
    print(f"  {label:<12} cosine to torch fp32: " + "; ".join(parts) + f" -> 0.999 gate {gate}")


def busy() -> subprocess.Popen[bytes]:
    """A competing process that keeps one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def threads_check(long: list[str], short: list[str]) -> None:
    print("\nONNX intra-op threads, quiet and beside one busy process (wall clock):")
    for contend in (False, True):
        proc = busy() if contend else None
        try:
            time.sleep(0.5)
            for threads in (1, 2):
                for spin in (False, True):
                    emb = OnnxEmbedder(threads=threads, allow_spinning=spin)
                    emb.encode(short[:4])
                    wall, _ = latency(emb.encode, long[:20])
                    swall, _ = latency(emb.encode, short[:40])
                    rate, _ = throughput(emb.encode, long[:32], repeats=2)
                    print(
                        f"  {'busy neighbour' if contend else 'quiet':<14} threads {threads} spin {int(spin)}: "
                        f"240-token single p50 {np.percentile(wall, 50):.1f} ms p99 {np.percentile(wall, 99):.1f};"
                        f" short p50 {np.percentile(swall, 50):.2f} ms p99 {np.percentile(swall, 99):.2f};"
                        f" batched {rate:.1f} prompts/s"
                    )
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the torch default)")
    parser.add_argument("--onnx-threads", type=int, default=None, help="default: $ROUTER_ML_ONNX_THREADS or auto")
    parser.add_argument("--repeats", type=int, default=60, help="prompts per latency set")
    parser.add_argument("--cosine-prompts", type=int, default=600, help="real prompts for the cosine figures")
    parser.add_argument("--int8", action="store_true", help="also build and measure the int8 model")
    parser.add_argument("--threads-check", action="store_true", help="time 1 vs 2 threads under contention")
    args = parser.parse_args()

    prompts = load_prompts()
    torch_emb = SentenceTransformerEmbedder(threads=args.threads)
    t0 = time.perf_counter()
    fast = OnnxEmbedder(threads=args.onnx_threads)
    print(f"machine: {machine()}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"torch fp32 on {args.threads} thread(s); ONNX Runtime on {fast.threads} intra-op thread(s) "
        f"({onnx_threads(args.onnx_threads)} chosen); ONNX embedder ready in {time.perf_counter() - t0:.1f} s "
        f"(model {fast.onnx_path.name}, {fast.onnx_path.stat().st_size / 1e6:.0f} MB)"
    )
    lengths = fast.token_lengths(prompts)
    short, long = prompt_sets(prompts, lengths, args.repeats)
    print(
        f"prompts: short mean {np.mean(fast.token_lengths(short)):.1f} tokens, long mean "
        f"{np.mean(fast.token_lengths(long)):.1f} tokens, {len(short)} and {len(long)} of each\n"
    )
    backends: list[tuple[str, Embedder]] = [("torch fp32", torch_emb), ("onnx fp32", fast)]
    if args.int8:
        backends.append(("onnx int8", OnnxEmbedder(threads=args.onnx_threads, precision="int8")))
    figures = {label: report_speed(label, emb, short, long) for label, emb in backends}
    base = figures["torch fp32"]
    for label, f in list(figures.items())[1:]:
        print(
            f"  {label} vs torch fp32: short p50 {base['short_p50'] / f['short_p50']:.2f}x "
            f"(cpu {base['short_cpu_p50'] / f['short_cpu_p50']:.2f}x), 240-token p50 "
            f"{base['240-token_p50'] / f['240-token_p50']:.2f}x (cpu "
            f"{base['240-token_cpu_p50'] / f['240-token_cpu_p50']:.2f}x), batched {f['batch'] / base['batch']:.2f}x"
        )

    # Cosine to torch fp32 on real prompts, stratified by length (seeded sample).
    rng = np.random.default_rng(0)
    n_tok = np.array(lengths)
    per = args.cosine_prompts // 3
    pick: list[int] = []
    for lo, hi in ((0, 64), (64, 192), (192, 10**6)):
        pool = np.flatnonzero((n_tok > lo) & (n_tok <= hi))
        pick += rng.choice(pool, size=min(per, pool.size), replace=False).tolist()
    texts = [prompts[i] for i in pick]
    print(f"\ncosine on {len(texts)} real prompts (seeded, a third each: <=64, 65-192, >192 tokens):")
    ref = torch_emb.encode(texts)
    for label, emb in backends[1:]:
        cosine_table(label, emb.encode(texts), ref, n_tok[pick])
    if args.threads_check:
        threads_check(long, short)


if __name__ == "__main__":
    main()
