"""Background grading in the service, on this machine: what a judge of known accuracy teaches a day-one policy, and
what grading costs the routing path.

1. **Learning gain.** MMLU-Pro (the shared benchmark) over four models (tests.servekit.MODELS), split by the project's
   hash split of ``prompt_id``: the stream is drawn from TRAIN, the held-out prompts are TEST (nothing here is tuned,
   so TEST is only read for the figures). Per seed, a fixed stream of ``--requests`` prompts is drawn (seeded) and
   sent by 4 concurrent clients to a real service (in this process, on loopback HTTP) started from a `router-ml init`
   day-one policy (default llama-3.1-8b-instruct, explore share 0.5, lam 0.01, min-graded 50, as
   tests/test_serve_grading.py does). The service grades every answer (``[grader] kind = "judge"``, judge_model
   gpt-4o, sample_rate 1.0; snapshots every 100 grades as in the test, and 10 s after the last grade, so the last
   snapshot holds every grade) with the test kit's fake judge (tests/judgekit.py), which knows each answer's benchmark
   grade and flips a seeded share ``e`` of its verdicts; the no-grading baseline has sample_rate 0 (run once: with
   nothing graded nothing is learned, whatever the stream). Prints the held-out quality and cost of the init version
   and of the last online snapshot (router_ml.day_one_stream.replay, the policy as it serves, exploration included),
   the gain, mean ± sd over seeds, and the judge spend per 1k requests: as charged for the fake judge's fixed usage
   (100 prompt + 20 completion tokens a call), and as estimated for a real gpt-4o judge at MMLU-Pro's lengths
   (rubric + prompt + the routed model's recorded answer, chars / 4, in; a 40-token verdict out). Also
   always-the-default and always-the-best single model (best on TRAIN) on held-out.
2. **Routing latency, grading off vs on.** The same day-one service as `router-ml serve` in its own process (one per
   condition, all three up at once): grading off (sample_rate 0), on (sample_rate 1.0, the judge answering at
   once), and on with a slow judge (each verdict after ``--slow-seconds``). ``--clients`` concurrent clients send
   chat completions of distinct TRAIN prompts (the same prompts, in the same order, to each condition; each service
   embeds them afresh) in blocks of ``--block`` requests, the conditions' order rotating each round; after an "on"
   block the grading backlog is left to drain before the next block, so one condition's background work does not
   land in another's block (how long it took is printed). Prints p50/p95/p99 of client-observed latency, the ratio
   to grading off, and requests per second (median over blocks).

Everything (clients, fake upstream and judge, the service) shares this machine's cores: compare the ratios, and read
the load average printed with the figures. Usage:
    PYTHONPATH=. .venv/bin/python benchmarks/grading.py [--requests 600] [--seeds 3] [--error-rates 0 0.1 0.3]
        [--skip-learning] [--skip-latency] [--latency-rounds 8] [--block 50] [--clients 4] [--slow-seconds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import polars as pl
from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test kits: a fake judge, the service on loopback
from router_ml import mlflow_schema, settings
from router_ml.catalog import Catalog
from router_ml.cli import main as cli
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.day_one_stream import replay
from router_ml.embed import EmbedderSpec
from router_ml.encoders import Embedders
from router_ml.fullinfo import FullInfo
from router_ml.graders import RUBRIC
from router_ml.registry import PolicyRegistry, VersionInfo
from router_ml.split import split_by_hash
from tests.judgekit import FakeJudgeUpstream, prompt_key
from tests.servekit import ADMIN_KEY, MODELS, InProcessServer, Server, ServerProcess, client, write_config

JUDGE = "gpt-4o"
DEFAULT = "llama-3.1-8b-instruct"
LEARNING = "[learning]\nsnapshot_every_updates = 100\nsnapshot_every_seconds = 10\nseed = {seed}\n"
"""Snapshots every 100 grades (as the test), and 10 s after the last grade, so the last snapshot holds them all."""
VERDICT_TOKENS = 40
"""What a real judge's verdict (a score and one or two sentences) is taken to cost, in completion tokens."""
LEARN_CLIENTS = 4


# -- shared ---------------------------------------------------------------------------------------------------------
def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def init_policy(home: Path, uri: str) -> None:
    """`router-ml init` of the day-one policy into the MLflow store ``uri``, promoted (as the test does)."""
    catalog = home / "catalog.toml"
    full = Catalog.load(settings.default_catalog())
    Catalog(tuple(full.spec(m) for m in MODELS)).save(catalog)
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli(["init", "--catalog", str(catalog), "--default", DEFAULT, "--explore-share", "0.5", "--lam",
                    "0.01", "--min-graded", "50", "--promote", "--tracking-uri", uri])
    if code != 0:
        raise RuntimeError(f"router-ml init exited {code}")


def grader(rate: float, extra: str = "") -> str:
    return f'[grader]\nkind = "judge"\njudge_model = "{JUDGE}"\nsample_rate = {rate}\n{extra}'


def service_home(root: Path, name: str) -> tuple[Path, str]:
    """A fresh ROUTER_ML_HOME (and MLflow store in it) holding the day-one policy as the champion."""
    home = root / name
    home.mkdir(parents=True)
    os.environ[settings.HOME_ENV] = str(home)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    init_policy(home, uri)
    return home, uri


def chat(c: httpx.Client, prompt: str) -> None:
    r = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": prompt}]})
    if r.status_code != 200:
        raise RuntimeError(f"chat completion: HTTP {r.status_code}: {r.text[:300]}")


def rows(server: Server, sql: str) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(f"file:{server.log}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql))


def pending(server: Server) -> int:
    return int(rows(server, "SELECT COUNT(*) AS n FROM grade_jobs WHERE state = 'pending'")[0]["n"])


def applied(server: Server) -> int:
    return int(httpx.get(f"{server.url}/healthz", timeout=30).json()["feedback_applied"])


def wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held (polled every 0.1 s)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def drained(server: Server, done: int) -> Callable[[], bool]:
    """No grade job pending, and the learner holds at least ``done`` grades."""
    return lambda: pending(server) == 0 and applied(server) >= done


def mean_sd(values: list[float], fmt: str = ".4f") -> str:
    return f"{np.mean(values):{fmt}} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:{fmt}}"


# -- 1. learning gain -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Data:
    stream: FullInfo
    heldout: FullInfo
    heldout_x: npt.NDArray[np.float32]
    output_tokens: dict[tuple[str, str], int]  # (prompt, model) -> the model's recorded answer length


@dataclass(frozen=True)
class LearnRun:
    graded: int
    snapshots: int
    learned: int  # the grades the last snapshot holds
    init_quality: float
    init_cost: float
    last_quality: float
    last_cost: float
    spend_per_1k: float
    real_spend_per_1k: float
    seconds: float


def load_data(benchmark: Path, cache: Path, max_heldout: int | None) -> Data:
    bench = load_benchmark(benchmark).filter(pl.col("model").is_in(MODELS))
    table = FullInfo.from_benchmark(bench, models=MODELS)
    train_rows, test_rows = split_by_hash(table.prompt_ids)
    heldout = table.subset(test_rows[:max_heldout] if max_heldout else test_rows)
    embedder = Embedders(cache_path=cache).get(EmbedderSpec())
    heldout_x = np.asarray(embedder.encode(heldout.prompts), dtype=np.float32)
    tokens = {(p, m): int(t) for p, m, t in bench.select("prompt", "model", "output_tokens").iter_rows()}
    return Data(table.subset(train_rows), heldout, heldout_x, tokens)


def real_judge_spend(server: Server, data: Data) -> float:
    """What a gpt-4o judge would have cost per 1k requests for the answers this service graded, at MMLU-Pro's real
    lengths: the rubric with the prompt and the routed model's recorded answer in, a short verdict out."""
    spec = Catalog.load(settings.default_catalog()).spec(JUDGE)
    rubric = estimate_tokens(RUBRIC.replace("{reference_note}", "").replace("{prompt}", "").replace("{answer}", ""))
    routed = rows(server, "SELECT d.prompt, d.model, j.decision_id IS NOT NULL AS graded FROM decisions d"
                          " LEFT JOIN grade_jobs j USING (decision_id)")
    total = 0.0
    for row in routed:
        if row["graded"]:
            prompt = str(row["prompt"]).removeprefix("user: ")
            tokens_in = rubric + estimate_tokens(prompt) + data.output_tokens[(prompt, str(row["model"]))]
            total += spec.cost_usd(tokens_in, VERDICT_TOKENS)
    return total / max(len(routed), 1) * 1000.0


def online_snapshots(registry: PolicyRegistry) -> list[VersionInfo]:
    """The service's online snapshots, oldest first."""
    versions = sorted(registry.versions(), key=lambda v: int(v.version))
    return [v for v in versions if v.tags.get(mlflow_schema.TAG_SOURCE) == mlflow_schema.SOURCE_ONLINE]


def newest_snapshot_holds(uri: str) -> int:
    """How many grades the newest online snapshot holds (0: none yet)."""
    snapshots = online_snapshots(PolicyRegistry(uri))
    return int(snapshots[-1].tags.get(mlflow_schema.TAG_SEQ, 0)) if snapshots else 0


def learn_once(root: Path, data: Data, *, rate: float, error_rate: float, seed: int, requests: int) -> LearnRun:
    """One service from the day-one policy over the seed's stream, grading at ``rate`` with a judge wrong
    ``error_rate`` of the time; the held-out replay of the init version and of the last online snapshot."""
    t0 = time.perf_counter()
    home, uri = service_home(root, f"learn-r{rate:g}-e{error_rate:g}-s{seed}")
    stream_rows = np.random.default_rng(seed).integers(0, len(data.stream.prompts), size=requests)
    prompts = [data.stream.prompts[int(r)] for r in stream_rows]
    with FakeJudgeUpstream(error_rate=error_rate, seed=seed) as judge:
        for r in set(stream_rows.tolist()):
            for k, model in enumerate(MODELS):
                judge.truth[(prompt_key(data.stream.prompts[r]), model)] = float(data.stream.quality[r, k])
        config = write_config(home / "serve.toml", home=home, upstream=judge.url, models=dict.fromkeys(MODELS, "ok"),
                              extra=grader(rate, f"concurrency = {LEARN_CLIENTS}\n") + LEARNING.format(seed=seed))
        server = InProcessServer(config, home, uri).start()
        try:
            clients = [client(server) for _ in range(LEARN_CLIENTS)]
            with ThreadPoolExecutor(LEARN_CLIENTS) as pool:
                list(pool.map(lambda i: chat(clients[i % LEARN_CLIENTS], prompts[i]), range(requests)))
            wait(lambda: pending(server) == 0, 300, "the grade jobs")
            graded = len(rows(server, "SELECT 1 FROM feedback"))
            wait(lambda: applied(server) == graded, 300, "the learner")
            if graded:  # the time-based snapshot of the last grades, registered before the service stops
                wait(lambda: newest_snapshot_holds(uri) >= graded, 120, "the last snapshot")
            spend = httpx.get(f"{server.url}/v1/spend", headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
            spent = float(spend["grading"]["total_usd"])
            real = real_judge_spend(server, data)
        finally:
            server.stop()
    registry = PolicyRegistry(uri)
    snapshots = online_snapshots(registry)
    init_q, init_c = replay(registry.load("1")[0].policy, data.heldout, data.heldout_x)
    last_q, last_c = (
        replay(registry.load(snapshots[-1].version)[0].policy, data.heldout, data.heldout_x)
        if snapshots else (init_q, init_c)
    )
    learned = int(snapshots[-1].tags.get(mlflow_schema.TAG_SEQ, 0)) if snapshots else 0
    return LearnRun(graded, len(snapshots), learned, init_q, init_c, last_q, last_c, spent / requests * 1000.0, real,
                    time.perf_counter() - t0)


def learning(root: Path, data: Data, args: argparse.Namespace) -> None:
    conditions = [("no grading", 0.0, 0.0)] + [(f"judge e={e:g}", 1.0, e) for e in args.error_rates]
    runs: dict[str, list[LearnRun]] = {name: [] for name, _, _ in conditions}
    loads: list[str] = []
    for seed in range(args.seeds):  # seeds outermost: a drift in the machine's load touches every condition alike
        for name, rate, error_rate in conditions:
            if rate == 0 and seed > 0:
                continue  # nothing is graded, so nothing is learned: the same figures for every seed
            run = learn_once(root, data, rate=rate, error_rate=error_rate, seed=seed, requests=args.requests)
            runs[name].append(run)
            loads.append(load_average())
            print(f"  seed {seed} {name:<12} graded {run.graded:>4}, {run.snapshots} snapshots (the last holds "
                  f"{run.learned}), held-out quality {run.init_quality:.4f} -> {run.last_quality:.4f}, "
                  f"{run.seconds:.0f} s (load {loads[-1]})", flush=True)

    heldout, stream = data.heldout, data.stream
    single = {m: (float(np.nanmean(heldout.quality[:, k])), float(np.nanmean(heldout.cost[:, k])) * 1000.0)
              for k, m in enumerate(MODELS)}
    best = MODELS[int(np.argmax(np.nanmean(stream.quality, axis=0)))]  # the best single model on TRAIN
    print(f"\n1. Learning gain: {args.requests} requests a run drawn from {len(stream.prompts)} TRAIN prompts, "
          f"{args.seeds} seeds, held-out {len(heldout.prompts)} TEST prompts; mean ± sd over runs; "
          f"loads after each run: {'; '.join(loads)}")
    print(f"   always {DEFAULT} (the default): quality {single[DEFAULT][0]:.4f}, ${single[DEFAULT][1]:.3f} per 1k; "
          f"always {best} (best single on TRAIN): quality {single[best][0]:.4f}, ${single[best][1]:.3f} per 1k")
    print("   condition    | runs | graded | last snapshot holds | init quality | last snapshot quality | "
          "gain            | init $/1k | last $/1k     | judge $/1k (fake usage) | judge $/1k (est. real gpt-4o)")
    for name, _, _ in conditions:
        rs = runs[name]
        print(f"   {name:<12} | {len(rs):>4} | {np.mean([r.graded for r in rs]):>6.0f} | "
              f"{np.mean([r.learned for r in rs]):>19.0f} | {np.mean([r.init_quality for r in rs]):>12.4f} | "
              f"{mean_sd([r.last_quality for r in rs]):<21} | {mean_sd([r.last_quality - r.init_quality for r in rs])}"
              f" | {np.mean([r.init_cost for r in rs]):9.3f} | {mean_sd([r.last_cost for r in rs], '.3f'):<13} | "
              f"{mean_sd([r.spend_per_1k for r in rs], '.3f'):<23} | "
              f"{mean_sd([r.real_spend_per_1k for r in rs], '.2f')}")


# -- 2. routing latency ---------------------------------------------------------------------------------------------
@dataclass
class Condition:
    name: str
    judge: FakeJudgeUpstream
    server: ServerProcess
    grades: bool
    latencies: list[float]
    block_rps: list[float]
    drain: list[float]


def block(server: Server, prompts: list[str], clients: int) -> tuple[list[float], float]:
    """``prompts`` as chat completions, ``clients`` at a time: each one's latency (ms) and the block's wall time."""
    local = threading.local()

    def one(prompt: str) -> float:
        if not hasattr(local, "client"):
            local.client = client(server)
        start = time.perf_counter()
        chat(local.client, prompt)
        return (time.perf_counter() - start) * 1000.0

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        took = list(pool.map(one, prompts))
    return took, time.perf_counter() - start


@contextlib.contextmanager
def conditions(root: Path, slow_seconds: float) -> Iterator[list[Condition]]:
    made: list[Condition] = []
    with contextlib.ExitStack() as stack:
        for name, rate, mode in (("off", 0.0, "ok"), ("on", 1.0, "ok"), ("on, slow judge", 1.0, "slow")):
            judge = stack.enter_context(FakeJudgeUpstream(slow_seconds=slow_seconds))
            judge.mode = mode
            home, uri = service_home(root, f"latency-{len(made)}")
            config = write_config(home / "serve.toml", home=home, upstream=judge.url,
                                  models=dict.fromkeys(MODELS, "ok"), extra=grader(rate) + LEARNING.format(seed=0))
            server = ServerProcess(config, home, uri).start()
            stack.callback(server.stop)
            made.append(Condition(name, judge, server, rate > 0 and mode == "ok", [], [], []))
        yield made


def latency(root: Path, data: Data, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    warm, per = 20, args.latency_rounds * args.block
    prompts = data.stream.prompts[: warm + per]  # distinct prompts; each service embeds each once
    loads: list[str] = []
    with conditions(root, args.slow_seconds) as conds:
        for c in conds:  # a first block each, not counted: connections, the encoder's first calls
            block(c.server, prompts[:warm], args.clients)
        for c in conds:
            if c.grades:
                wait(drained(c.server, 0), 300, "the warm-up's grades")
        for r in range(args.latency_rounds):
            chunk = prompts[warm + r * args.block: warm + (r + 1) * args.block]
            for c in conds[r % len(conds):] + conds[: r % len(conds)]:
                took, wall = block(c.server, chunk, args.clients)
                c.latencies += took
                c.block_rps.append(len(chunk) / wall)
                if c.grades:  # leave none of this block's grading to the next block, whoever's it is
                    done = len(rows(c.server, "SELECT 1 FROM feedback"))
                    c.drain.append(wait(drained(c.server, done), 300, "the grading backlog"))
            loads.append(load_average())
        judged = {c.name: c.judge.judged for c in conds}
        backlog = {c.name: pending(c.server) for c in conds}
    off = conds[0]
    p = {c.name: np.percentile(c.latencies, [50, 95, 99]) for c in conds}
    print(f"\n2. Routing latency: {args.clients} clients, {args.latency_rounds} rounds of {args.block} chat "
          f"completions per condition (order rotating), slow judge {args.slow_seconds:g} s; "
          f"{time.perf_counter() - t0:.0f} s; "
          f"loads after each round: {'; '.join(loads)}")
    print("   grading        | n   | p50 ms | p95 ms | p99 ms | p50 x off | p95 x off | req/s (median block) | "
          "judge calls | still pending | drain after a block (median, max)")
    for c in conds:
        q = p[c.name]
        drain = f"{np.median(c.drain):.2f} s, {max(c.drain):.2f} s" if c.drain else "-"
        print(f"   {c.name:<14} | {len(c.latencies)} | {q[0]:6.1f} | {q[1]:6.1f} | {q[2]:6.1f} | "
              f"{q[0] / p[off.name][0]:9.2f} | {q[1] / p[off.name][1]:9.2f} | {np.median(c.block_rps):20.1f} | "
              f"{judged[c.name]:>11} | {backlog[c.name]:>13} | {drain}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    ap.add_argument("--requests", type=int, default=600, help="requests per learning run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--error-rates", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--max-heldout", type=int, default=None, help="the first N TEST prompts only (default: all)")
    ap.add_argument("--latency-rounds", type=int, default=8)
    ap.add_argument("--block", type=int, default=50, help="chat completions per condition per round")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients of the latency part")
    ap.add_argument("--slow-seconds", type=float, default=2.0)
    ap.add_argument("--skip-learning", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.pop(settings.TRACKING_URI_ENV, None)
    os.environ[settings.ONNX_DIR_ENV] = str(settings.onnx_dir())  # the encoder is built once, not per service home
    cache = settings.embedding_cache_path()
    print(f"{machine()}; load average {load_average()} at the start", flush=True)
    data = load_data(args.benchmark, cache, args.max_heldout)
    with tempfile.TemporaryDirectory(prefix="gradebench-") as tmp:
        if not args.skip_learning:
            learning(Path(tmp), data, args)
        if not args.skip_latency:
            latency(Path(tmp), data, args)
    print(f"\n{time.perf_counter() - t0:.0f} s in all; load average {load_average()} at the end")


if __name__ == "__main__":
    main()
