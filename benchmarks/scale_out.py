"""Scale-out figures on this machine, on real engines over loopback, in one run:

1. routes/s and p50/p99 route latency of the all-in-one service on its SQLite log, and of 1, 2 and 3
   ``--role router`` replicas on one PostgreSQL log (clients spread round-robin over the replicas), with the CPU time
   a route costs each server process;
2. the single learner's sustained rate (``router-ml learn --follow``): grades learned per second from PostgreSQL,
   embedding included, after its fixed start-up cost;
3. batch embedding into the cache: this process vs Ray with 1 and 2 workers, and Ray's fixed start-up cost.

Everything shares the machine's cores (clients, servers, PostgreSQL, the MLflow server), so on a 2-core machine the
figures are CPU-bound and say what one more replica costs, not what a cluster of machines would give. Usage:
    .venv/bin/python benchmarks/scale_out.py [--requests 400] [--clients 8] [--grades 1200] [--embed 1200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from _machine import machine, summary
from serve_load import prompts_by_length, train_small_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test kits start PostgreSQL and MLflow

from router_ml import settings
from router_ml.batch_embed import embed_files
from router_ml.decision_log import DecisionLog, DecisionRecord, new_decision_id
from router_ml.embed import EmbedderSpec
from router_ml.encoders import build_embedder
from router_ml.registry import PolicyRegistry
from tests.mlflowkit import mlflow_server
from tests.pgkit import PostgresServer, postgres
from tests.servekit import API_KEY, ServerProcess, write_config

LEARNING = "[learning]\nsnapshot_every_updates = 1000000\nsnapshot_every_seconds = 3600\nreload_poll_seconds = 5.0\n"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(urls: list[str], prompts: list[str], clients: int) -> tuple[float, list[float]]:
    """Route every prompt once, ``clients`` at a time, round-robin over ``urls``: routes/s and latencies (ms)."""
    local = threading.local()

    def one(i: int) -> float:
        if not hasattr(local, "client"):
            local.client = httpx.Client(headers={"authorization": f"Bearer {API_KEY}"}, timeout=60)
        t0 = time.perf_counter()
        r = local.client.post(f"{urls[i % len(urls)]}/v1/route", json={"prompt": prompts[i]})
        r.raise_for_status()
        return (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(len(prompts))))
    return len(prompts) / (time.perf_counter() - t0), latencies


def routes(pg: PostgresServer, root: Path, uri: str, prompts: list[str], clients: int) -> None:
    setups: list[tuple[str, int, str | None]] = [("all-in-one, SQLite log", 1, None)]
    setups += [(f"{n} replica{'s' if n > 1 else ''}, PostgreSQL log", n, f"routes{n}") for n in (1, 2, 3)]
    for label, n, database in setups:
        home = root / (database or "sqlite")
        home.mkdir()
        log = pg.create_database(database) if database else None
        config = write_config(
            home / "serve.toml",
            home=home,
            upstream="http://127.0.0.1:9",
            models={},
            extra=LEARNING,
            log=log,
            policy=f'tracking_uri = "{uri}"',
        )
        role = ["--role", "router"] if database else []
        servers = []
        for i in range(n):
            (home / f"s{i}").mkdir()
            servers.append(ServerProcess(config, home / f"s{i}", uri, args=role).start(timeout=300))
        try:
            urls = [s.url for s in servers]
            drive(urls, prompts[:40], clients)  # warm: connections, first calls
            before = [cpu_seconds(s.proc.pid) for s in servers if s.proc is not None]
            rate, latencies = drive(urls, prompts, clients)
            after = [cpu_seconds(s.proc.pid) for s in servers if s.proc is not None]
            cpu_ms = 1000 * sum(a - b for a, b in zip(after, before)) / len(prompts)
            print(f"  {label:<32} {rate:6.1f} routes/s   {summary(latencies)}   {cpu_ms:.1f} CPU-ms per route")
        finally:
            for s in servers:
                s.stop()


def fill_log(url: str, prompts: list[str], grades: int) -> int:
    """``grades`` decisions with their grades in the log at ``url``; returns the last feedback sequence number."""
    log = DecisionLog(url)
    rng = np.random.default_rng(0)
    try:
        candidates = ("gpt-4o", "llama-3.1-8b-instruct")
        for i in range(grades):
            decision_id = new_decision_id()
            log.record_decision(
                DecisionRecord(
                    decision_id,
                    time.time(),
                    None,
                    prompts[i % len(prompts)],
                    candidates[i % 2],
                    0.5,
                    candidates,
                    dict.fromkeys(candidates, 0.5),
                    0.05,
                    "1",
                    0.001,
                )
            )
            log.record_feedback(decision_id, float(rng.random() < 0.7), None)
        return log.last_feedback_seq()
    finally:
        log.close()


def _run_learner(config: Path, home: Path, uri: str) -> tuple[float, str]:
    """Start ``router-ml learn --follow``, wait until it has replayed the log and serves, stop it: the seconds that
    took and what it logged."""
    err = home / "serve.err"
    err.unlink(missing_ok=True)
    learner = ServerProcess(config, home, uri, command="learn", args=["--follow"])
    t0 = time.perf_counter()
    learner.start()
    try:
        while "replayed" not in (err.read_text() if err.exists() else ""):
            if learner.proc is not None and learner.proc.poll() is not None:
                raise SystemExit(f"the learner exited: {err.read_text()[-2000:]}")
            time.sleep(0.05)
        return time.perf_counter() - t0, err.read_text()
    finally:
        learner.stop()


def learner_seconds(pg: PostgresServer, root: Path, uri: str, prompts: list[str], grades: int, name: str) -> float:
    """Seconds a restarted ``router-ml learn --follow`` takes to learn ``grades`` graded decisions that reached the
    log after its first start (which marks the base version in the log), start-up included."""
    home = root / name
    home.mkdir()
    url = pg.create_database(name)
    config = write_config(
        home / "serve.toml", home=home, upstream="http://127.0.0.1:9", models={}, extra=LEARNING, log=url,
        policy=f'tracking_uri = "{uri}"',
    )  # fmt: skip
    _run_learner(config, home, uri)  # the first start marks the base version: later grades are its to learn
    fill_log(url, prompts, grades)
    seconds, logged = _run_learner(config, home, uri)
    if f"replayed {grades} grades" not in logged:
        raise SystemExit(f"the learner did not replay the {grades} grades: {logged[-1000:]}")
    return seconds


def learner_rate(pg: PostgresServer, root: Path, uri: str, prompts: list[str], grades: int) -> None:
    fixed = learner_seconds(pg, root, uri, prompts, 0, "learn0")
    full = learner_seconds(pg, root, uri, prompts, grades, "learn1")
    print(f"  start-up with an empty log {fixed:.1f} s; with {grades} grades {full:.1f} s")
    print(f"  sustained: {grades / (full - fixed):.1f} grades learned per second (embedding each prompt included)")


def embedding(root: Path, prompts: list[str]) -> None:
    source = root / "prompts.parquet"
    pl.DataFrame({"prompt": prompts}).write_parquet(source)
    tiny = root / "tiny.parquet"
    pl.DataFrame({"prompt": prompts[:8]}).write_parquet(tiny)
    spec = EmbedderSpec()
    fixed = embed_files([tiny], spec, root / "tiny.sqlite", threads=1, ray="auto", workers=1, progress=False)
    print(f"  Ray's fixed cost (start a local Ray, start an actor, embed 8 prompts, shut down): {fixed.seconds:.1f} s")
    runs: list[tuple[str, str | None, int | None]] = [
        ("this process, 1 thread", None, None),
        ("Ray, 1 worker", "auto", 1),
        ("Ray, 2 workers", "auto", 2),
    ]
    for label, ray, workers in runs:
        cache = root / f"cache-{label.replace(' ', '').replace(',', '-')}.sqlite"
        report = embed_files([source], spec, cache, threads=1, ray=ray, workers=workers, progress=False)
        work = report.seconds - (fixed.seconds if ray else 0.0)
        steady = f"{report.embedded / work:5.1f}/s" if work > 0 else "n/a"
        print(
            f"  {label:<24} {report.embedded} prompts in {report.seconds:5.1f} s = "
            f"{report.embedded / report.seconds:5.1f} prompts/s ({steady} after Ray's fixed cost)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="routes per setup")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--grades", type=int, default=1200, help="grades in the learner's backlog")
    parser.add_argument("--embed", type=int, default=1200, help="distinct prompts to embed")
    parser.add_argument("--skip", nargs="*", default=[], choices=["routes", "learner", "embedding"])
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    short, _ = prompts_by_length(args.requests + 40)
    texts = pl.read_parquet(settings.default_benchmark(), columns=["prompt"])["prompt"].unique().sort().to_list()
    with tempfile.TemporaryDirectory() as tmp, postgres() as pg:
        root = Path(tmp)
        if "embedding" not in args.skip:
            print("batch embedding into the cache:")
            embedding(root, texts[: args.embed])
        with mlflow_server(pg, root / "mlflow") as uri:
            registry = PolicyRegistry(uri)
            print("training a small policy over the full catalog ...", flush=True)
            registry.log_version(train_small_policy(build_embedder(EmbedderSpec())), params={}, metrics={})
            registry.promote("1")
            if "routes" not in args.skip:
                print(f"routing ({args.requests} short prompts, {args.clients} concurrent clients):")
                routes(pg, root, uri, short[40 : 40 + args.requests], args.clients)
            if "learner" not in args.skip:
                print("the single learner on PostgreSQL:")
                learner_rate(pg, root, uri, texts, args.grades)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other work on the machine shares its cores)")


if __name__ == "__main__":
    main()
