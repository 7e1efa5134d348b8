"""Scaled out, on real engines over loopback: three `router-ml serve --role router` replicas and one
`router-ml learn --follow` on a shared PostgreSQL log, with an `mlflow server` (its backend on the same PostgreSQL) as
the registry. Under concurrent route and feedback load from several clients spread over the replicas, every
acknowledged decision and grade is in the log, every grade is learned exactly once (the learner's newest snapshot is
the base policy plus the log's grades, weight for weight) and every replica serves that snapshot; a replica or the
learner killed with kill -9 mid-load loses nothing acknowledged."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.cli import main
from router_ml.contracts import load_benchmark
from router_ml.decision_log import DecisionLog
from router_ml.embed import CachedEmbedder
from router_ml.fullinfo import FullInfo
from router_ml.mlflow_schema import TAG_SEQ
from router_ml.registry import PolicyRegistry
from serve.learner import newest_snapshot
from tests.mlflowkit import mlflow_server
from tests.pgkit import PASSWORD, PostgresServer, postgres
from tests.servekit import API_KEY, MODELS, FakeUpstream, InProcessServer, ServerProcess, client, write_config
from tests.test_learner_no_loss import learned_state, replayed

LEARNING = "[learning]\nsnapshot_every_updates = 40\nsnapshot_every_seconds = 2.0\nreload_poll_seconds = 1.0\n"


@dataclass
class Cluster:
    home: Path
    log_url: str
    tracking_uri: str
    config: Path
    registry: PolicyRegistry
    prompts: list[str]

    def replica(self, name: str) -> ServerProcess:
        home = self.home / name
        home.mkdir(exist_ok=True)
        return ServerProcess(self.config, home, self.tracking_uri, args=["--role", "router"])

    def start(self, prefix: str) -> tuple[ServerProcess, list[ServerProcess]]:
        """A running learner and three running replicas (named ``prefix0..2``)."""
        learner = self.learner().start()
        replicas = [self.replica(f"{prefix}{i}").start(timeout=240) for i in range(3)]
        return learner, replicas

    def learner(self, name: str = "learner") -> ServerProcess:
        home = self.home / name
        home.mkdir(exist_ok=True)
        args = ["--follow", "--poll-seconds", "0.2"]
        return ServerProcess(self.config, home, self.tracking_uri, command="learn", args=args)


@pytest.fixture(scope="module")
def cluster(
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    policy_artifact: PolicyArtifact,
    upstream: FakeUpstream,
    small_benchmark: Path,
) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("scale")
    with mlflow_server(postgres_server, home / "mlflow", database="scale_mlflow") as uri:
        registry = PolicyRegistry(uri)
        registry.log_version(policy_artifact, params={"lam": 0.05}, metrics={})
        registry.promote("1")
        log_url = postgres_server.create_database("scale_log")
        config = write_config(
            home / "serve.toml",
            home=home,
            upstream=upstream.url,
            models=dict.fromkeys(MODELS, "ok"),
            extra=LEARNING,
            log=log_url,
            policy=f'tracking_uri = "{uri}"',
        )
        prompts = FullInfo.from_benchmark(load_benchmark(small_benchmark)).prompts[:60]
        yield Cluster(home, log_url, uri, config, registry, prompts)


def load(
    urls: list[str],
    prompts: list[str],
    *,
    per_client: int,
    clients: int = 6,
    at: int = 0,
    then: Callable[[], None] | None = None,
) -> tuple[set[str], set[str]]:
    """``clients`` threads, each routing ``per_client`` prompts on a random replica and grading each on another;
    ``then`` runs once, when ``at`` grades have been acknowledged. Returns the acknowledged decisions and grades."""
    routed: set[str] = set()
    graded: set[str] = set()
    lock, fired = threading.Lock(), threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(headers={"authorization": f"Bearer {API_KEY}"}, timeout=30) as http:
            for _ in range(per_client):
                try:
                    r = http.post(f"{rng.choice(urls)}/v1/route", json={"prompt": rng.choice(prompts)})
                    if r.status_code != 200:
                        continue
                    decision = r.json()["decision_id"]
                    with lock:
                        routed.add(decision)
                    quality = float(rng.random() < 0.6)
                    f = http.post(f"{rng.choice(urls)}/v1/feedback", json={"decision_id": decision, "quality": quality})
                    if f.status_code == 202:
                        with lock:
                            graded.add(decision)
                            due = then is not None and len(graded) >= at and not fired.is_set()
                            if due:
                                fired.set()
                        if due and then is not None:
                            then()
                except httpx.HTTPError:
                    time.sleep(0.05)  # a replica went away: this client goes on with the others

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return routed, graded


def in_log(cluster: Cluster) -> tuple[set[str], set[str]]:
    log = DecisionLog(cluster.log_url)
    try:
        frame = log.to_frame(include_fallback=True)
        return set(frame["event_id"].to_list()), set(frame.filter(frame["quality"].is_not_null())["event_id"].to_list())
    finally:
        log.close()


def settled(cluster: Cluster, replicas: list[ServerProcess], base: PolicyArtifact, embedder: CachedEmbedder) -> None:
    """The learner's newest snapshot holds every grade in the log exactly once, and every replica serves it."""
    log = DecisionLog(cluster.log_url)
    try:
        last = log.last_feedback_seq()
        deadline = time.monotonic() + 240
        while True:
            snap = newest_snapshot(cluster.registry, "1", log)
            if snap is not None and int(snap.tags[TAG_SEQ]) == last:
                break
            assert time.monotonic() < deadline, f"the learner did not catch up with the log (seq {last}, {snap})"
            time.sleep(1.0)
        artifact, _ = cluster.registry.load(snap.version)
        learnable = sum(1 for g in log.graded_since(0) if g.learnable)
        assert artifact.policy.updates == base.policy.updates + learnable, "every grade learned once"
        expected = replayed(base.policy, log, embedder, last)
        assert learned_state(artifact.policy) == learned_state(expected), "the snapshot is the base plus the log"
    finally:
        log.close()
    for replica in replicas:
        deadline = time.monotonic() + 60
        while replica.health()["policy_version"] != snap.version:
            assert time.monotonic() < deadline, "a replica did not load the learner's newest snapshot"
            time.sleep(0.5)


def test_replicas_and_one_learner_lose_nothing_through_kill_9_and_learn_every_grade_once(
    cluster: Cluster, policy_artifact: PolicyArtifact, embedder: CachedEmbedder
) -> None:
    learner, replicas = cluster.start("r")
    try:
        urls = [r.url for r in replicas]
        routed, graded = load(urls, cluster.prompts, per_client=25)
        assert len(graded) >= 100
        logged, logged_grades = in_log(cluster)
        assert routed <= logged and graded <= logged_grades
        settled(cluster, replicas, policy_artifact, embedder)
        # the shared log exports as logged traffic, as the SQLite one does
        out = cluster.home / "export.parquet"
        assert main(["export-logs", "--log", cluster.log_url, "-o", str(out)]) == 0
        exported = pl.read_parquet(out)
        assert routed <= set(exported["event_id"]) and graded <= set(exported.drop_nulls("quality")["event_id"])
        # a second learner, or an all-in-one service, on the same log refuses to start
        code, err = cluster.learner("second").fails_to_start()
        assert code == 2 and "another learner" in err
        code, err = InProcessServer(cluster.config, cluster.home / "r0", cluster.tracking_uri).fails_to_start()
        assert code == 2 and "--role router" in err

        # kill -9 of a replica mid-load, then of the learner: nothing acknowledged is lost, every grade learned once
        victim = replicas[0]

        def kill_a_replica() -> None:
            victim.kill()
            urls.remove(victim.url)

        routed2, graded2 = load(urls, cluster.prompts, per_client=20, at=40, then=kill_a_replica)
        assert victim.proc is not None and victim.proc.returncode is not None, "the replica was killed mid-load"
        routed3, graded3 = load(urls, cluster.prompts, per_client=20, at=30, then=learner.kill)
        learner = cluster.learner("restarted").start()  # resumes from its newest snapshot and replays the rest
        logged, logged_grades = in_log(cluster)
        assert routed | routed2 | routed3 <= logged and graded | graded2 | graded3 <= logged_grades
        settled(cluster, replicas[1:], policy_artifact, embedder)
    finally:
        for process in (*replicas, learner):
            process.stop()


def test_an_unreachable_database_is_one_line_without_the_password(cluster: Cluster) -> None:
    broken = cluster.config.read_text().replace(cluster.log_url.rsplit("@", 1)[1], "127.0.0.1:1/nowhere")
    (cluster.home / "broken.toml").write_text(broken)
    code, err = InProcessServer(cluster.home / "broken.toml", cluster.home, cluster.tracking_uri).fails_to_start()
    assert code == 2 and "127.0.0.1:1/nowhere" in err and PASSWORD not in err
    assert len(err.strip().splitlines()) == 1


def test_a_database_outage_is_503_and_the_replica_recovers_by_itself(cluster: Cluster) -> None:
    """The log on a PostgreSQL server of its own, stopped under a replica: routes answer 503 (never 500, never an
    answer whose decision was not logged), /readyz says why, and when the server is back the replica serves again."""
    with postgres() as pg:
        url = pg.create_database("outage")
        config = cluster.config.read_text().replace(cluster.log_url, url)
        (cluster.home / "outage.toml").write_text(config)
        replica = ServerProcess(
            cluster.home / "outage.toml", cluster.home / "outage", cluster.tracking_uri, args=["--role", "router"]
        )
        (cluster.home / "outage").mkdir(exist_ok=True)
        try:
            replica.start(timeout=240)
            with client(replica) as route:
                assert route.post("/v1/route", json={"prompt": "hi"}).status_code == 200
                pg.stop("immediate")
                r = route.post("/v1/route", json={"prompt": "hi"})
                assert r.status_code == 503 and PASSWORD not in r.text
                assert replica.get("/readyz").status_code == 503  # the pool waits its timeout
                pg.restart()
                deadline = time.monotonic() + 60
                while route.post("/v1/route", json={"prompt": "hi"}).status_code != 200:
                    assert time.monotonic() < deadline, "the replica did not recover"
                    time.sleep(1.0)
                assert replica.get("/readyz").status_code == 200
            log = DecisionLog(url)
            assert log.counts()["decisions"] >= 2, "every 200 had its decision logged"
            log.close()
        finally:
            replica.stop()
