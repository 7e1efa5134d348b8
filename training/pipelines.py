"""The training-side jobs the CLI runs: simulate, train (and version in MLflow), and the end-to-end demo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from router_ml import settings
from router_ml.artifacts import PolicyArtifact
from router_ml.atomic import atomic_write_with
from router_ml.calibrate import CalibrationReport, Calibrator
from router_ml.catalog import Catalog
from router_ml.contracts import graded_only, load_benchmark, load_logs
from router_ml.embed import DEFAULT_BACKEND, CachedEmbedder, Embedder, EmbeddingCache, build_encoder
from router_ml.evaluation import LoggedEvents
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import TrainReport, file_fingerprint, fit_graded, train_policy
from router_ml.operating import Target
from router_ml.policy import Policy, PolicyConfig
from router_ml.registry import PolicyRegistry, VersionInfo, load_policy
from router_ml.simulate import EpsilonGreedy, LoggingPolicy, Uniform, simulate
from router_ml.split import split_by_hash


@dataclass(frozen=True)
class EmbedderOptions:
    """How to build the (cached) embedder: ``backend`` is ``torch`` (sentence-transformers) or ``onnx`` (the same
    model on ONNX Runtime); ``max_len`` is the truncation length in tokens (default: the model's, 256 for MiniLM).
    The backend is part of the embedder's name, so a policy records it and rebuilds the same one at load."""

    model_path: str | None = None
    threads: int | None = None
    batch_size: int = 16
    cache: Path | None = None
    backend: str = DEFAULT_BACKEND
    max_len: int | None = None

    def build(self) -> Embedder:
        """The encoder behind the on-disk cache."""
        inner = build_encoder(
            self.backend, self.model_path, threads=self.threads, batch_size=self.batch_size, max_len=self.max_len
        )
        return CachedEmbedder(inner, EmbeddingCache(self.cache or settings.embedding_cache_path()))


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """Write Parquet atomically."""
    atomic_write_with(path, lambda tmp: df.write_parquet(tmp))


def logging_policy(name: str, model: str | None, epsilon: float) -> LoggingPolicy:
    """``uniform`` or ``epsilon-greedy`` (around ``model``)."""
    if name == "uniform":
        return Uniform()
    if name == "epsilon-greedy":
        if not model:
            raise ValueError("simulate: --logging epsilon-greedy needs --greedy-model")
        return EpsilonGreedy(model, epsilon)
    raise ValueError(f"simulate: unknown logging policy {name!r} (uniform, epsilon-greedy)")


def run_simulate(benchmark: Path, events: int, seed: int, out: Path, logging: LoggingPolicy) -> pl.DataFrame:
    """Simulate ``events`` logged decisions from ``benchmark`` and write them to ``out``."""
    table = FullInfo.from_benchmark(load_benchmark(benchmark))
    logs = simulate(table, events, seed=seed, logging=logging)
    write_parquet(logs, out)
    return logs


def run_split(benchmark: Path, test_fraction: float, salt: str, train_out: Path, test_out: Path) -> tuple[int, int]:
    """Write the TRAIN and TEST parts of a benchmark, split by a hash of ``prompt_id``; returns prompt counts."""
    bench = load_benchmark(benchmark)
    ids = bench["prompt_id"].unique().sort().to_list()
    _, test_rows = split_by_hash(ids, test_fraction, salt)
    test_ids = pl.Series([ids[i] for i in test_rows], dtype=pl.String)
    in_test = pl.col("prompt_id").is_in(test_ids.implode())
    write_parquet(bench.filter(~in_test), train_out)
    write_parquet(bench.filter(in_test), test_out)
    return len(ids) - len(test_rows), len(test_rows)


def catalog_for_benchmark(benchmark: Path, bench: pl.DataFrame, catalog: Path | None) -> Catalog:
    """``catalog`` if given; else the first that covers the benchmark's models of: ``<stem>_prices.csv`` beside the
    benchmark, the default catalog, and the shared price lists (``../shared/data/*_prices.csv``, so a split of a
    shared benchmark keeps its list prices); else prices estimated from the benchmark's own costs."""
    if catalog is not None:
        return Catalog.load(catalog)
    models = set(bench["model"].unique().to_list())
    beside = benchmark.with_name(f"{benchmark.stem}_prices.csv")
    shared = sorted(settings.shared_data().glob("*_prices.csv")) if settings.shared_data().is_dir() else []
    for source in [beside, settings.default_catalog(), *shared]:
        if not source.exists():
            continue
        found = Catalog.load(source) if source.suffix == ".toml" else Catalog.from_prices_csv(source)
        if models <= set(found.names):
            return Catalog(tuple(m for m in found.models if m.name in models))
    return Catalog.from_benchmark(bench)


@dataclass(frozen=True)
class TrainOutcome:
    """A trained policy, its report, its calibration (if it was calibrated to a target) and its MLflow version."""

    policy: Policy
    report: TrainReport
    version: VersionInfo
    embedder: str
    calibration: CalibrationReport | None = None
    calibrator: Calibrator | None = None
    """What calibrated the version: it can meet more targets on the same logs (:meth:`Calibrator.report`)."""


def run_train(
    logs_path: Path,
    *,
    catalog: Catalog,
    config: PolicyConfig,
    features: FeatureConfig,
    passes: int,
    embedder: EmbedderOptions,
    registry: PolicyRegistry,
    target: Target | None = None,
    folds: int = 3,
    confidence: float = 0.5,
    warm_start: str | None = None,
    extra_params: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainOutcome:
    """Train on a logged-traffic file, calibrate it to ``target`` (unless ``None``: then it serves the router at
    ``config.lam``) and register the result as a new MLflow model version.

    With ``warm_start`` (a version, alias or folder) the existing policy continues learning over
    ``catalog``: its features and VW settings are kept (``config`` and ``features`` are then ignored)
    and models the catalog adds start from their price and id features, and get explored.
    """
    logs = load_logs(logs_path)
    enc = embedder.build()
    start: Policy | None = None
    parent: str | None = None
    if warm_start is not None:
        previous, parent = load_policy(warm_start, registry)
        if previous.embedder != enc.name:
            raise ValueError(f"train: --warm-start policy uses embedder '{previous.embedder}', not '{enc.name}'")
        start = previous.policy.with_catalog(catalog)
        config, features = start.config, start.featurizer.config
    policy, report = train_policy(
        logs,
        enc,
        catalog,
        config,
        features,
        passes=passes,
        warm_start=start.copy() if start else None,
        progress=progress,
    )
    calibration, calibrator = None, None
    if target is not None:
        graded = graded_only(logs).graded
        events = LoggedEvents.from_logs(logs, catalog)
        embeddings = enc.encode(events.prompts)

        def fit(rows: npt.NDArray[np.int64]) -> Policy:
            fold = start.copy() if start is not None else None
            return fit_graded(
                graded[rows], embeddings[rows], catalog, config, features, passes=passes, warm_start=fold
            )[0]

        calibrator = Calibrator(events, embeddings, fit, folds=folds)
        calibration = calibrator.report(target, confidence=confidence)
        policy = policy.at(calibration.point)
    artifact = PolicyArtifact(policy, embedder=enc.name, embedder_path=embedder.model_path, parent_version=parent)
    params: dict[str, Any] = {
        "lam": policy.config.lam,
        "operating_point": policy.operating.label,
        "target": calibration.target if calibration else "",
        "exploration": config.exploration,
        "epsilon": config.epsilon,
        "gamma_scale": config.gamma_scale,
        "learning_rate": config.learning_rate,
        "max_weight": config.max_weight,
        "power_t": config.power_t,
        "bits": config.bits,
        "seed": config.seed,
        "passes": passes,
        "clusters": ",".join(map(str, features.clusters)),
        "embedding_features": features.embedding,
        "interactions": ",".join(features.interactions),
        "embedder": enc.name,
        "catalog": ",".join(catalog.names),
        "catalog_size": len(catalog),
        "data_sha256": file_fingerprint(logs_path),
        "data_path": str(logs_path),
        "parent_version": parent or "",
        **(extra_params or {}),
    }
    metrics = {
        "n_events": float(report.n_events),
        "n_ungraded": float(report.n_ungraded),
        "embed_seconds": report.embed_seconds,
        "learn_seconds": report.learn_seconds,
        "events_per_second": report.events_per_second,
        "progressive_snips_quality": report.progressive_quality,
        "progressive_snips_cost_usd": report.progressive_cost_usd,
        "progressive_snips_reward": report.progressive_reward,
        **(calibration.metrics() if calibration else {}),
    }
    tags = {"source": "batch", **({"parent_version": parent} if parent else {})}
    if calibration is not None:
        tags |= {
            "target": calibration.target,
            "target_met": str(calibration.met).lower(),
            "reference": calibration.reference,
        }
    version = registry.log_version(
        artifact,
        params=params,
        metrics=metrics,
        tags=tags,
        run_name=f"train-{calibration.target if calibration else f'lam{config.lam}'}",
    )
    return TrainOutcome(
        policy=policy,
        report=report,
        version=version,
        embedder=enc.name,
        calibration=calibration,
        calibrator=calibrator,
    )
