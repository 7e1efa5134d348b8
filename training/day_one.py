"""The ``init`` job: register a day-one policy version, one that has no training data (see :mod:`router_ml.day_one`).

The VW model is empty, the features' clusters are seeded random centroids (or k-means on sample prompts the user
gives, ungraded), and the policy carries its :class:`~router_ml.day_one.DayOnePrior`. The version is tagged
``source=init`` in MLflow; ``router-ml serve`` serves it like any other, and its online snapshots descend from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from router_ml import mlflow_schema
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.day_one import DayOnePrior, check_catalog, spread_featurizer
from router_ml.embed import Embedder
from router_ml.errors import InvalidInput, MissingInput
from router_ml.features import FeatureConfig, Featurizer
from router_ml.operating import Target
from router_ml.policy import Policy, PolicyConfig
from router_ml.registry import PolicyRegistry, VersionInfo


@dataclass(frozen=True)
class InitOutcome:
    """The registered day-one version and its prior."""

    version: VersionInfo
    prior: DayOnePrior
    cluster_source: str

    def summary(self) -> str:
        p = self.prior
        cap = p.explore_budget_usd_per_1k
        budget = f"${cap:g} per 1,000 requests" if cap is not None else "no spend cap"
        target = f", quality target {p.quality_target:g} x the default's" if p.quality_target is not None else ""
        return (
            f"registered day-one version {self.version.version} (no training data; source=init): default "
            f"{p.default}, exploration share <= {p.explore_share:g}, {budget}{target}; clusters: {self.cluster_source}"
        )


def quality_target(target: str | None) -> float | None:
    """The quality fraction of ``--target`` (``parity`` is 1); a budget target needs logs, so it is refused."""
    if target is None:
        return None
    parsed = Target.parse(target)
    if parsed.kind != "quality":
        raise InvalidInput(
            "--target: init takes parity or quality:FRACTION (a budget needs logs: use --lam, or [budget] in serve)"
        )
    if parsed.reference is not None:
        raise InvalidInput("--target: on day one the reference is the default model; give it with --default")
    return parsed.value


def day_one_policy(
    catalog: Catalog,
    prior: DayOnePrior,
    config: PolicyConfig,
    features: FeatureConfig,
    dim: int,
    prompt_embeddings: object | None = None,
) -> Policy:
    """An empty policy over ``catalog`` with ``prior``; clusters fitted on ``prompt_embeddings`` if given."""
    import numpy as np

    if prompt_embeddings is not None:
        featurizer = Featurizer.fit(np.asarray(prompt_embeddings, dtype=np.float32), features)
    else:
        featurizer = spread_featurizer(dim, features)
    return Policy(catalog, featurizer, config, prior=prior)


def prepare(
    catalog_path: Path,
    *,
    default: str | None,
    explore_share: float,
    explore_budget: float | None,
    target: str | None,
    confidence: float = 0.95,
    min_graded: int = 200,
) -> tuple[Catalog, DayOnePrior]:
    """Check the catalog and the flags (raising one error that names the field) before anything is written."""
    catalog = Catalog.load(catalog_path)
    prior = DayOnePrior(
        default=check_catalog(catalog, default),
        explore_share=explore_share,
        explore_budget_usd_per_1k=explore_budget,
        quality_target=quality_target(target),
        confidence=confidence,
        min_graded=min_graded,
    )
    return catalog, prior


def run_init(
    catalog: Catalog,
    prior: DayOnePrior,
    *,
    config: PolicyConfig,
    features: FeatureConfig,
    embedder: Embedder,
    registry: PolicyRegistry,
    prompts: Path | None = None,
) -> InitOutcome:
    """Build the empty policy with its prior (clusters from ``prompts`` if given) and register it (``source=init``)."""
    embeddings = None
    source = "random"
    if prompts is not None:
        if not prompts.exists():
            raise MissingInput(f"--prompts: file not found: {prompts}")
        if prompts.suffix == ".parquet":
            frame = pl.read_parquet(prompts)
            texts = frame["prompt"].unique(maintain_order=True).to_list() if "prompt" in frame.columns else []
        else:
            texts = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise InvalidInput(f"--prompts: {prompts} has no prompts (a Parquet 'prompt' column, or one per line)")
        embeddings = embedder.encode(texts)
        source = f"k-means on {len(texts)} prompts of {prompts}"
    policy = day_one_policy(catalog, prior, config, features, embedder.dim, embeddings)
    info = registry.log_version(
        PolicyArtifact(policy, embedder=embedder.spec),
        params=mlflow_schema.init_params(prior, source),
        metrics={},
        tags=mlflow_schema.init_tags(prior),
        run_name="init",
    )
    return InitOutcome(info, prior, source)
