"""Shared fixtures: small real slices of the shared benchmark, the default encoder (the packaged MiniLM on ONNX
Runtime) with a temp cache, a trained policy, a fake upstream and served policies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from filelock import FileLock
from threadpoolctl import threadpool_limits

from router_ml import settings
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.embed import CachedEmbedder, EmbeddingCache
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import train_policy
from router_ml.onnx_embed import OnnxEmbedder
from router_ml.policy import PolicyConfig
from router_ml.simulate import simulate
from router_ml.torch_embed import SentenceTransformerEmbedder
from tests.pgkit import PostgresServer, pg_bin
from tests.servekit import BODY_TIMEOUT, MODELS, FakeUpstream, InProcessServer, mount_tmpfs, serving_champion, unmount

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# The library runs here under the thread limit `router-ml` sets for BLAS (router_ml.cli.main; one thread unless
# $ROUTER_ML_BLAS_THREADS says otherwise), in this process (the session fixture below) and in the notebook kernels
# and other processes the tests start. With OpenBLAS's default, a spinning thread per core, the estimators' coverage
# test took 55 s of CPU for 43 s of wall time alone, against 37 s for 37 s on one thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(settings.blas_threads()))

SLOWEST_FIRST = (
    "test_scale", "test_serve_grading", "test_batch_embed", "test_estimators", "test_day_one", "test_notebooks",
    "test_serve", "test_deploy", "test_evaluate", "test_cli", "test_serve_savings",
)
"""The slowest test files, slowest first (measured on 2 cores)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slowest files first, each file's tests in their own order: `make test`'s workers (``pytest -n 2
    --dist loadfile``) take one file at a time in this order, so the run does not end waiting on a long file."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every process of this run shares: under ``pytest -n N`` the workers' common temp root, so the
    ONNX model is exported and each test prompt embedded once per run, not once per worker; else this session's."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / f"shared-{name}"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def blas_threads() -> Iterator[None]:
    """The CLI's BLAS thread limit for the whole session (see the module's note)."""
    with threadpool_limits(limits=settings.blas_threads()):
        yield


@pytest.fixture(scope="session", autouse=True)
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of built ONNX embedders for the run and the servers it starts: built once, not per test."""
    path = shared_dir(tmp_path_factory, "onnx")
    os.environ[settings.ONNX_DIR_ENV] = str(path)
    return path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback for the session (its package is installed by .ci/run)."""
    if pg_bin("initdb") is None:
        pytest.fail("PostgreSQL is not installed (initdb); .ci/run installs it with apt-get")
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def shared_benchmark() -> Path:
    path = settings.default_benchmark()
    if not path.exists():
        pytest.fail(f"the shared benchmark is missing at {path}; CI runs with ../shared beside the clone")
    return path


def slice_benchmark(source: Path, n_prompts: int, dest: Path, *, models: list[str] | None = None) -> Path:
    """The first ``n_prompts`` prompt ids (sorted) of a benchmark, written as a real Parquet file."""
    df = pl.read_parquet(source)
    ids = df["prompt_id"].unique().sort().head(n_prompts)
    df = df.filter(pl.col("prompt_id").is_in(ids.implode()))
    if models is not None:
        df = df.filter(pl.col("model").is_in(models))
    df.write_parquet(dest)
    return dest


@pytest.fixture(scope="session")
def small_benchmark(shared_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 prompts x 31 models."""
    return slice_benchmark(shared_benchmark, 120, tmp_path_factory.mktemp("bench") / "small.parquet")


@pytest.fixture(scope="session")
def learning_benchmark(shared_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 prompts x 31 models: enough for a policy to learn something real."""
    return slice_benchmark(shared_benchmark, 600, tmp_path_factory.mktemp("bench") / "learning.parquet")


@pytest.fixture(scope="session")
def embedding_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's embedding cache (SQLite in WAL mode: the workers of ``pytest -n N`` share it)."""
    return shared_dir(tmp_path_factory, "embcache")


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformerEmbedder:
    """The packaged MiniLM on torch (sentence-transformers): the reference the ONNX backend is checked against."""
    return SentenceTransformerEmbedder(threads=1)


@pytest.fixture(scope="session")
def onnx_minilm(onnx_dir: Path) -> OnnxEmbedder:
    """The default encoder: the packaged MiniLM on ONNX Runtime, exported once into the run's ONNX folder (one
    worker exports while the others wait)."""
    with FileLock(onnx_dir / "export.lock"):
        return OnnxEmbedder(threads=1)


@pytest.fixture(scope="session")
def embedder(onnx_minilm: OnnxEmbedder, embedding_cache_dir: Path) -> CachedEmbedder:
    """The default encoder behind a session-wide cache (each test prompt is embedded once per run)."""
    return CachedEmbedder(onnx_minilm, EmbeddingCache(embedding_cache_dir / "embeddings.sqlite"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedding_cache_dir: Path) -> Path:
    """A fresh ROUTER_ML_HOME (own MLflow store) that shares the session's embedding cache."""
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "embeddings.sqlite").symlink_to(embedding_cache_dir / "embeddings.sqlite")
    return tmp_path / "home"


@pytest.fixture(scope="session")
def policy_artifact(small_benchmark: Path, embedder: CachedEmbedder) -> PolicyArtifact:
    """A real policy over four catalog models, trained on simulated traffic from the shared benchmark."""
    bench = load_benchmark(small_benchmark).filter(pl.col("model").is_in(MODELS))
    full = Catalog.load(settings.default_catalog())
    catalog = Catalog(tuple(full.spec(m) for m in MODELS))
    logs = simulate(FullInfo.from_benchmark(bench, models=catalog.names), 400, seed=0)
    policy, _ = train_policy(logs, embedder, catalog, PolicyConfig(), FeatureConfig(clusters=(4,)), progress=False)
    return PolicyArtifact(policy, embedder=embedder.spec)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """A fake OpenAI-compatible upstream on 127.0.0.1, told per test how to misbehave."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="session")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """A 4 MiB tmpfs for the decision log of :func:`hardened` (None where mounting is not allowed)."""
    where = tmp_path_factory.mktemp("disk") / "mnt"
    if not mount_tmpfs(where):
        yield None
        return
    try:
        yield where
    finally:
        unmount(where)


@pytest.fixture(scope="session")
def hardened(
    tmp_path_factory: pytest.TempPathFactory, policy_artifact: PolicyArtifact, upstream: FakeUpstream, disk: Path | None
) -> Iterator[InProcessServer]:
    """One service (in this process) for the trust and fault tests: every model on the fake upstream, the log on the
    small tmpfs, a 1 s body timeout, a 0.5 s busy timeout, and the OpenAPI spec served to admin keys."""
    home = tmp_path_factory.mktemp("hardened-home")
    with serving_champion(
        home,
        policy_artifact,
        upstream.url,
        server=f"body_timeout_seconds = {BODY_TIMEOUT}\nopenapi = true",
        log=(disk or home) / "serve" / "decisions.sqlite",
        log_options="busy_timeout_seconds = 0.5",
    ) as server:
        yield server
