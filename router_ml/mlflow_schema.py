"""What a policy version records in MLflow: the one place that names its parameters and tags.

Every version (a batch-trained one, an online snapshot) is one MLflow run registered as one model version.

* **Parameters of every version** (:func:`version_params`, written by :meth:`PolicyRegistry.log_version`): the
  learner config (``lam``, ``learns``, ``exploration``, ``epsilon``, ``gamma_scale``, ``learning_rate``,
  ``power_t``, ``max_weight``, ``bits``, ``seed``), the features (``clusters``, ``embedding_features``,
  ``interactions``), the encoder (``embedder``, ``embedder_backend``, ``embedder_max_len``), the catalog
  (``catalog``, ``catalog_size``), ``operating_point``, ``updates`` (VW updates the model holds) and
  ``parent_version``.
* **Parameters of a batch-trained version** (:func:`training_params`): ``target``, ``passes``, ``data_sha256``,
  ``data_path``.
* **Parameters of a day-one version** (:func:`init_params`, ``router-ml init``): ``day_one_default``,
  ``explore_share``, ``explore_budget_usd_per_1k``, ``quality_target``, ``confidence``, ``min_graded``,
  ``cluster_source`` (``random`` or the prompts file the clusters were fitted on).
* **Tags**, on the run and on the model version: ``source`` (``batch``, ``online``, or ``init`` for a version
  registered with no training data by ``router-ml init``; its ``day_one_default`` tag names the default model),
  ``parent_version``; a
  calibrated version's ``target``, ``target_met``, ``reference``; an online snapshot's ``base_version`` (the
  version the service started from), ``log_id`` (its decision log) and ``feedback_seq`` (the log's feedback
  sequence number up to which the snapshot holds every grade). ``router-ml evaluate`` tags the run with
  ``eval_data_sha256``, ``eval_data_path``, ``eval_best_single``; ``router-ml promote`` the version with
  ``promotion_*``.
* **Metrics**: batch training's ``n_events``, ``progressive_snips_*``, ``calibrated_*``; evaluation's ``eval_*``;
  an online snapshot's ``online_updates``.
"""

from __future__ import annotations

from typing import Any

from router_ml.day_one import DayOnePrior
from router_ml.embed import EmbedderSpec
from router_ml.policy import Policy

TAG_SOURCE = "source"
SOURCE_BATCH = "batch"
SOURCE_ONLINE = "online"
SOURCE_INIT = "init"
TAG_DAY_ONE_DEFAULT = "day_one_default"
TAG_PARENT = "parent_version"
TAG_BASE = "base_version"
TAG_LOG = "log_id"
TAG_SEQ = "feedback_seq"
TAG_TARGET = "target"
TAG_TARGET_MET = "target_met"
TAG_REFERENCE = "reference"
TAG_EVAL_DATA_SHA256 = "eval_data_sha256"
TAG_EVAL_DATA_PATH = "eval_data_path"
TAG_EVAL_BEST_SINGLE = "eval_best_single"
PROMOTION_PREFIX = "promotion_"
MAX_PARAM_CHARS = 500
"""MLflow's limit on a parameter's value; longer values (a long catalog list) are cut."""


def version_params(policy: Policy, embedder: EmbedderSpec, parent_version: str | None) -> dict[str, str]:
    """The parameters every version logs, batch or online, as MLflow stores them (strings)."""
    config, features = policy.config, policy.featurizer.config
    params: dict[str, Any] = {
        "lam": config.lam,
        "learns": config.learns,
        "exploration": config.exploration,
        "epsilon": config.epsilon,
        "gamma_scale": config.gamma_scale,
        "learning_rate": config.learning_rate,
        "power_t": config.power_t,
        "max_weight": config.max_weight,
        "bits": config.bits,
        "seed": config.seed,
        "clusters": ",".join(map(str, features.clusters)),
        "embedding_features": features.embedding,
        "interactions": ",".join(features.interactions),
        "embedder": embedder.name,
        "embedder_backend": embedder.backend,
        "embedder_max_len": embedder.max_len,
        "catalog": ",".join(policy.catalog.names),
        "catalog_size": len(policy.catalog),
        "operating_point": policy.operating.label,
        "updates": policy.updates,
        "parent_version": parent_version or "",
    }
    return as_params(params)


def training_params(*, target: str, passes: int, data_sha256: str, data_path: str) -> dict[str, str]:
    """The parameters only a batch-trained version has: what it learned from and how."""
    return as_params({"target": target, "passes": passes, "data_sha256": data_sha256, "data_path": data_path})


def as_params(values: dict[str, Any]) -> dict[str, str]:
    """Values as MLflow parameters: strings of at most :data:`MAX_PARAM_CHARS` characters."""
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in values.items()}


def batch_tags(parent_version: str | None, target: str | None, target_met: bool | None, reference: str | None) -> dict[
    str, str
]:
    """The tags of a batch-trained version (the calibration's three when it was calibrated to a target)."""
    tags = {TAG_SOURCE: SOURCE_BATCH}
    if parent_version:
        tags[TAG_PARENT] = parent_version
    if target is not None:
        tags |= {TAG_TARGET: target, TAG_TARGET_MET: str(bool(target_met)).lower(), TAG_REFERENCE: reference or ""}
    return tags


def online_tags(parent_version: str, base_version: str, log_id: str, feedback_seq: int) -> dict[str, str]:
    """The tags of an online snapshot: where it descends from, and what of its decision log it holds."""
    return {
        TAG_SOURCE: SOURCE_ONLINE,
        TAG_PARENT: parent_version,
        TAG_BASE: base_version,
        TAG_LOG: log_id,
        TAG_SEQ: str(feedback_seq),
    }


def init_params(prior: DayOnePrior, cluster_source: str) -> dict[str, str]:
    """The parameters of a day-one version: its prior and caps, and where its clusters came from."""
    return as_params(
        {
            TAG_DAY_ONE_DEFAULT: prior.default,
            "explore_share": prior.explore_share,
            "explore_budget_usd_per_1k": prior.explore_budget_usd_per_1k if prior.explore_budget_usd_per_1k is not None
            else "",
            "quality_target": prior.quality_target if prior.quality_target is not None else "",
            "confidence": prior.confidence,
            "min_graded": prior.min_graded,
            "cluster_source": cluster_source,
        }
    )


def init_tags(prior: DayOnePrior) -> dict[str, str]:
    """The tags of a day-one version: no training data (``source`` ``init``), and its default model."""
    return {TAG_SOURCE: SOURCE_INIT, TAG_DAY_ONE_DEFAULT: prior.default}
