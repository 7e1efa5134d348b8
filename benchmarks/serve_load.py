"""Load on the HTTP service over loopback: route latency (short and ~240-token prompts), routes/s at concurrency 8,
server RSS, and where a route's time goes.

It trains a small real policy over the full 31-model catalog on a slice of the shared benchmark, registers it in a
temporary MLflow store, starts `router-ml serve` as its own process, and drives it with httpx. Every prompt is sent
once (a repeat gets a distinct suffix), so no figure but the last is read from the service's memo of recent
prompts' embeddings; the last routes the ~240-token prompts again, from the memo. Usage:
    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--concurrent 800]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from _machine import machine, summary

from router_ml import settings
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import DecisionLog, DecisionRecord, new_decision_id
from router_ml.embed import BACKENDS, DEFAULT_BACKEND, Embedder, EmbedderSpec
from router_ml.encoders import build_embedder
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import train_policy
from router_ml.policy import PolicyConfig
from router_ml.registry import PolicyRegistry
from router_ml.router import Router
from router_ml.simulate import simulate

KEY = "bench-key"


def prompts_by_length(n: int) -> tuple[list[str], list[str]]:
    """Real prompts: short ones (at most 30 tokens) and ~240-token ones (900-1100 characters), ``n`` of each.

    MMLU-Pro has few short questions, so they repeat in turn, each repeat made a new text by a suffix: the service
    would take a repeat's embedding from its memo of recent prompts."""
    texts = pl.read_parquet(settings.default_benchmark(), columns=["prompt"])["prompt"].unique().sort().to_list()
    short = [t for t in texts if estimate_tokens(t) <= 30]
    long = [t for t in texts if 900 <= len(t) <= 1100]
    rng = np.random.default_rng(0)
    rng.shuffle(short)
    rng.shuffle(long)
    if not short or not long:
        raise SystemExit("the benchmark has no short or no ~240-token prompts")
    return _distinct(short, n), _distinct(long, n)


def _distinct(pool: list[str], n: int) -> list[str]:
    return [pool[i % len(pool)] + (f" (variant {i // len(pool)})" if i >= len(pool) else "") for i in range(n)]


def train_small_policy(embedder: Embedder) -> PolicyArtifact:
    bench = load_benchmark(settings.default_benchmark())
    ids = bench["prompt_id"].unique().sort().head(300)
    bench = bench.filter(pl.col("prompt_id").is_in(ids.implode()))
    catalog = Catalog.load(settings.default_catalog())
    logs = simulate(FullInfo.from_benchmark(bench, models=catalog.names), 3000, seed=0)
    policy, _ = train_policy(logs, embedder, catalog, PolicyConfig(), FeatureConfig(), progress=False)
    return PolicyArtifact(policy, embedder=embedder.spec)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def in_process_breakdown(artifact: PolicyArtifact, embedder: Embedder, texts: list[str]) -> str:
    """The same steps as the service's route, timed one by one (medians, ms)."""
    router = Router(artifact.policy, embedder)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        log = DecisionLog(Path(tmp) / "d.sqlite")
        parts: dict[str, list[float]] = {"embed": [], "decide": [], "log commit (fsync)": []}
        for text in texts:
            t0 = time.perf_counter()
            emb = router.embed(text)
            t1 = time.perf_counter()
            d = router.decide(emb, rng, prompt_tokens=estimate_tokens(text))
            t2 = time.perf_counter()
            log.record_decision(
                DecisionRecord(
                    new_decision_id(),
                    time.time(),
                    None,
                    text,
                    d.model,
                    d.probability,
                    tuple(d.distribution),
                    d.distribution,
                    0.05,
                    "1",
                    0.0,
                )
            )
            t3 = time.perf_counter()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[key].append(dt * 1000)
        log.close()
    return ", ".join(f"{k} {np.median(v):.2f} ms" for k, v in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential routes per prompt length")
    parser.add_argument("--concurrent", type=int, default=800, help="routes sent by 8 clients at once")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help="the policy's embedder")
    args = parser.parse_args()
    short, long = prompts_by_length(args.requests + args.concurrent)
    embedder = build_embedder(EmbedderSpec(args.backend))
    print(f"machine: {machine()}; embedder {embedder.name}")
    print("training a small policy over the full catalog ...", flush=True)
    artifact = train_small_policy(embedder)
    print("in-process route, short prompts:", in_process_breakdown(artifact, embedder, short[:100]))
    print("in-process route, ~240-token prompts:", in_process_breakdown(artifact, embedder, long[:100]))

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        uri = f"sqlite:///{home / 'mlflow.db'}"
        registry = PolicyRegistry(uri)
        registry.log_version(artifact, params={}, metrics={})
        registry.promote("1")
        (home / "serve.toml").write_text(
            f'[log]\npath = "{home / "decisions.sqlite"}"\n[learning]\nsnapshot_every_updates = 1000000\n',
            encoding="utf-8",
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "ROUTER_ML_HOME": str(home), "MLFLOW_TRACKING_URI": uri, "ROUTER_ML_API_KEYS": KEY}
        cmd = [
            sys.executable,
            "-m",
            "router_ml.cli",
            "serve",
            "--config",
            str(home / "serve.toml"),
            "--port",
            str(port),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the server did not start") from None
                time.sleep(0.2)
            headers = {"authorization": f"Bearer {KEY}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
                c.post("/v1/route", json={"prompt": "warm up"})
                for name, texts in (("short", short), ("~240-token", long)):
                    lat = []
                    for text in texts[: args.requests]:
                        t0 = time.perf_counter()
                        r = c.post("/v1/route", json={"prompt": text})
                        lat.append((time.perf_counter() - t0) * 1000)
                        r.raise_for_status()
                    print(f"HTTP route, {name} prompts, sequential: {summary(lat)}")
                lat = []
                for text in long[: args.requests]:
                    t0 = time.perf_counter()
                    c.post("/v1/route", json={"prompt": text}).raise_for_status()
                    lat.append((time.perf_counter() - t0) * 1000)
                print(f"HTTP route, the ~240-token prompts again (from the memo), sequential: {summary(lat)}")

            pool_texts = short[args.requests : args.requests + args.concurrent]
            if len(pool_texts) < args.concurrent:
                pool_texts = (pool_texts * (args.concurrent // max(len(pool_texts), 1) + 1))[: args.concurrent]
            clients = [httpx.Client(base_url=url, headers=headers, timeout=60) for _ in range(8)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                codes = list(
                    pool.map(
                        lambda i: clients[i % 8].post("/v1/route", json={"prompt": pool_texts[i]}).status_code,
                        range(args.concurrent),
                    )
                )
            elapsed = time.perf_counter() - t0
            for cl in clients:
                cl.close()
            ok = sum(code == 200 for code in codes)
            print(
                f"HTTP route, short prompts, 8 concurrent clients: {ok / elapsed:.1f} routes/s ({ok}/{len(codes)} ok)"
            )
            print(f"server RSS after the load: {rss_mb(proc.pid):.0f} MB")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
