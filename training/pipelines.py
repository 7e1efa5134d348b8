"""The training-side jobs: simulate logged traffic, split a benchmark, train a policy and register it as a version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from router_ml import mlflow_schema, settings
from router_ml.artifacts import PolicyArtifact
from router_ml.atomic import atomic_write_with
from router_ml.calibrate import DEFAULT_CONFIDENCE, DEFAULT_FOLDS, CalibrationReport, Calibrator
from router_ml.catalog import Catalog
from router_ml.contracts import graded_only, load_benchmark, load_logs
from router_ml.embed import Embedder
from router_ml.errors import InvalidInput
from router_ml.events import LoggedEvents
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import TrainReport, file_fingerprint, fit_graded, train_policy
from router_ml.operating import Target
from router_ml.policy import Policy, PolicyConfig
from router_ml.registry import PolicyRegistry, VersionInfo, load_policy
from router_ml.simulate import EpsilonGreedy, LoggingPolicy, Uniform, simulate
from router_ml.split import split_by_hash


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """Write Parquet atomically."""
    atomic_write_with(path, lambda tmp: df.write_parquet(tmp))


def logging_policy(name: str, model: str | None, epsilon: float) -> LoggingPolicy:
    """``uniform`` or ``epsilon-greedy`` (around ``model``)."""
    if name == "uniform":
        return Uniform()
    if name == "epsilon-greedy":
        if not model:
            raise InvalidInput("simulate: --logging epsilon-greedy needs --greedy-model")
        return EpsilonGreedy(model, epsilon)
    raise InvalidInput(f"simulate: unknown logging policy {name!r} (uniform, epsilon-greedy)")


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

    def summary(self) -> str:
        """What the run did, for the terminal: the events, the progressive estimate, the operating point, the
        version."""
        r, v = self.report, self.version
        served = (
            self.calibration.format()
            if self.calibration is not None
            else f"operating point: {self.policy.operating.label} (no calibration: --lam was given)"
        )
        return "\n".join(
            [
                f"learned from {r.n_events} events ({r.n_ungraded} ungraded skipped) at {r.events_per_second:,.0f} "
                "events/s",
                f"progressive SNIPS: quality {r.progressive_quality:.4f}, cost ${r.progressive_cost_usd * 1000:.4f}/1k",
                served,
                f"registered {v.name} version {v.version} (run {v.run_id})",
            ]
        )


def run_train(
    logs_path: Path,
    *,
    catalog: Catalog,
    config: PolicyConfig,
    features: FeatureConfig,
    embedder: Embedder,
    registry: PolicyRegistry,
    passes: int = 1,
    target: Target | None = None,
    folds: int = DEFAULT_FOLDS,
    confidence: float = DEFAULT_CONFIDENCE,
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
    start, parent = _warm_start(warm_start, registry, embedder, catalog)
    if start is not None:
        config, features = start.config, start.featurizer.config
    fresh = start.copy() if start is not None else None
    policy, report = train_policy(
        logs, embedder, catalog, config, features, passes=passes, warm_start=fresh, progress=progress
    )
    calibration, calibrator = None, None
    if target is not None:
        calibrator = _calibrator(logs, embedder, catalog, config, features, passes, start, folds)
        calibration = calibrator.report(target, confidence=confidence)
        policy = policy.at(calibration.point)
    params = mlflow_schema.training_params(
        target=calibration.target if calibration else "",
        passes=passes,
        data_sha256=file_fingerprint(logs_path),
        data_path=str(logs_path),
    )
    version = registry.log_version(
        PolicyArtifact(policy, embedder=embedder.spec, parent_version=parent),
        params=params | (extra_params or {}),
        metrics=_train_metrics(report, calibration),
        tags=mlflow_schema.batch_tags(
            parent,
            calibration.target if calibration else None,
            calibration.met if calibration else None,
            calibration.reference if calibration else None,
        ),
        run_name=f"train-{calibration.target if calibration else f'lam{config.lam}'}",
    )
    return TrainOutcome(policy, report, version, embedder.name, calibration, calibrator)


def _warm_start(
    ref: str | None, registry: PolicyRegistry, embedder: Embedder, catalog: Catalog
) -> tuple[Policy | None, str | None]:
    """The policy to continue (over ``catalog``) and its version label, or (None, None) to start fresh."""
    if ref is None:
        return None, None
    previous = load_policy(ref, registry)
    if previous.artifact.embedder != embedder.spec:
        raise InvalidInput(
            f"train: --warm-start policy uses embedder '{previous.artifact.embedder.name}', not '{embedder.name}'"
        )
    return previous.artifact.policy.with_catalog(catalog), previous.label


def _calibrator(
    logs: pl.DataFrame,
    embedder: Embedder,
    catalog: Catalog,
    config: PolicyConfig,
    features: FeatureConfig,
    passes: int,
    start: Policy | None,
    folds: int,
) -> Calibrator:
    """What calibrates the version on its own logs: policies learned the same way on held-out folds."""
    graded = graded_only(logs).graded
    events = LoggedEvents.from_logs(logs, catalog)
    embeddings = embedder.encode(events.prompts)

    def fit(rows: npt.NDArray[np.int64]) -> Policy:
        fold = start.copy() if start is not None else None
        return fit_graded(graded[rows], embeddings[rows], catalog, config, features, passes=passes, warm_start=fold)[0]

    return Calibrator(events, embeddings, fit, folds=folds)


def _train_metrics(report: TrainReport, calibration: CalibrationReport | None) -> dict[str, float]:
    """A batch version's metrics: the run's counts and speed, the progressive SNIPS figures, the calibration's."""
    return {
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
