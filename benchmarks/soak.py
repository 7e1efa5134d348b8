"""Soak: the service's memory under a long mixed load. Prints the server's RSS and the size of /metrics after 10k, 20k
and 40k requests; with every cache bounded in bytes and every metric label from a bounded set, the curve flattens.

A small real policy over the full 31-model catalog, `router-ml serve` as its own process, the tests' fake upstream on
127.0.0.1 for every model, and 8 clients sending a mix: routes (each with a random candidate list, so the policy's
per-list caches see new keys), feedback on most of them, chat completions plain and streamed (each with a new `user`),
and spend reads. Usage:
    .venv/bin/python benchmarks/soak.py [--checkpoints 10000 20000 40000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from _machine import machine
from serve_load import prompts_by_length, rss_mb, train_small_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from router_ml.embed import EmbedderSpec
from router_ml.encoders import build_embedder
from tests.servekit import ADMIN_KEY, API_KEY, FakeUpstream, ServerProcess, champion, write_config

CLIENTS = 8


def one_request(c: httpx.Client, i: int, prompts: list[str], names: list[str]) -> int:
    """Request ``i`` of the mix; returns its status (feedback counts as part of its route)."""
    rng = np.random.default_rng(i)
    prompt = prompts[i % len(prompts)]
    kind = i % 10
    if kind < 5:  # a route with a random candidate list, graded four times in five
        candidates = sorted(rng.choice(names, size=int(rng.integers(2, 8)), replace=False).tolist())
        r = c.post("/v1/route", json={"prompt": prompt, "candidates": candidates})
        if r.status_code == 200 and kind < 4:
            c.post("/v1/feedback", json={"decision_id": r.json()["decision_id"], "quality": float(rng.random())})
        return r.status_code
    body = {"model": "router", "messages": [{"role": "user", "content": prompt}], "user": f"user-{i}"}
    if kind < 8:
        return c.post("/v1/chat/completions", json=body).status_code
    if kind < 9:
        with c.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
            for _ in r.iter_bytes():
                pass
            return r.status_code
    return c.get("/v1/spend").status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[10_000, 20_000, 40_000])
    args = parser.parse_args()
    embedder = build_embedder(EmbedderSpec())
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}; embedder {embedder.name}", flush=True)
    artifact = train_small_policy(embedder)
    names = artifact.policy.catalog.names
    prompts, _ = prompts_by_length(2000)
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream() as upstream:
        home = Path(tmp)
        uri, _ = champion(home, artifact)
        config = write_config(
            home / "serve.toml",
            home=home,
            upstream=upstream.url,
            models=dict.fromkeys(names, "ok"),
            extra="[learning]\nsnapshot_every_updates = 5000\n",
        )
        server = ServerProcess(config, home, uri).start()
        assert server.proc is not None
        headers = {"authorization": f"Bearer {API_KEY}"}
        admin = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
        clients = [httpx.Client(base_url=server.url, headers=headers, timeout=60) for _ in range(CLIENTS)]
        try:
            print(f"start: RSS {rss_mb(server.proc.pid):.0f} MB, /metrics {len(admin.get('/metrics').content)} B")
            done, start = 0, time.perf_counter()
            with ThreadPoolExecutor(CLIENTS) as pool:
                for checkpoint in args.checkpoints:
                    batch = range(done, checkpoint)
                    codes = list(pool.map(lambda i: one_request(clients[i % CLIENTS], i, prompts, names), batch))
                    done = checkpoint
                    bad = sum(code >= 500 for code in codes)
                    print(
                        f"after {done:>6} requests: RSS {rss_mb(server.proc.pid):.0f} MB, "
                        f"/metrics {len(admin.get('/metrics').content)} B, 5xx {bad}, "
                        f"{time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        finally:
            for c in [*clients, admin]:
                c.close()
            server.stop()


if __name__ == "__main__":
    main()
