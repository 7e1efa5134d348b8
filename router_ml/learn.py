"""Learning a policy: from logged traffic (embed the prompts, fit the features, replay the events into VW),
or online, serving a stream of prompts and learning from each graded outcome as it comes."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
from tqdm.auto import tqdm

from router_ml.catalog import Catalog
from router_ml.contracts import graded_only
from router_ml.cost_model import estimate_tokens
from router_ml.embed import Embedder
from router_ml.errors import InvalidInput
from router_ml.events import LoggedEvents
from router_ml.features import FeatureConfig, Featurizer
from router_ml.fullinfo import FullInfo
from router_ml.policy import Policy, PolicyConfig
from router_ml.reward import reward

_CHUNK = 512


@dataclass(frozen=True)
class TrainReport:
    """What a training run did and how fast."""

    n_events: int
    n_ungraded: int
    passes: int
    embed_seconds: float
    learn_seconds: float
    progressive_quality: float
    progressive_cost_usd: float
    progressive_reward: float

    @property
    def events_per_second(self) -> float:
        """VW updates per second of learning (embedding excluded)."""
        return self.n_events * self.passes / max(self.learn_seconds, 1e-9)


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the training-data hash logged with every version)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_policy(
    logs: pl.DataFrame,
    embedder: Embedder,
    catalog: Catalog,
    config: PolicyConfig,
    features: FeatureConfig,
    *,
    passes: int = 1,
    warm_start: Policy | None = None,
    progress: bool = True,
) -> tuple[Policy, TrainReport]:
    """Learn from validated logs; ungraded rows are skipped and counted in the report.

    The first pass follows the log order (as the traffic happened); later passes reshuffle with the
    config's seed. ``warm_start`` continues an existing policy (its features are kept).
    """
    if passes < 1:
        raise InvalidInput(f"train: 'passes' must be >= 1, got {passes}")
    split = graded_only(logs)
    graded = split.graded
    if graded.height == 0:
        raise InvalidInput(f"train: no graded events to learn from ({split.n_ungraded} ungraded rows skipped)")
    catalog.require(graded["model"].unique().to_list(), "train: logs 'model'")
    catalog.require(graded["candidates"].explode().unique().to_list(), "train: logs 'candidates'")
    t0 = time.perf_counter()
    embeddings = embedder.encode(graded["prompt"].to_list(), progress=progress)
    embed_seconds = time.perf_counter() - t0
    policy, report = fit_graded(
        graded, embeddings, catalog, config, features, passes=passes, warm_start=warm_start, progress=progress
    )
    return policy, replace(report, n_ungraded=split.n_ungraded, embed_seconds=embed_seconds)


def fit_graded(
    graded: pl.DataFrame,
    embeddings: npt.NDArray[np.float32],
    catalog: Catalog,
    config: PolicyConfig,
    features: FeatureConfig,
    *,
    passes: int = 1,
    warm_start: Policy | None = None,
    progress: bool = False,
) -> tuple[Policy, TrainReport]:
    """Learn from graded logged events whose prompts are already embedded (``embeddings`` row-aligned), checked
    against ``catalog`` by the caller: the core of :func:`train_policy`, and what calibration folds run."""
    policy = warm_start or Policy(catalog, Featurizer.fit(embeddings, features), config)
    models = graded["model"].to_list()
    qualities = graded["quality"].to_numpy()
    costs = graded["cost_usd"].to_numpy()
    props = graded["propensity"].to_numpy()
    cands = graded["candidates"].to_list()
    tokens = np.array([estimate_tokens(p) for p in graded["prompt"].to_list()], dtype=np.float64)
    rng = np.random.default_rng(config.seed)
    before = np.zeros(graded.height, dtype=np.float64)
    t1 = time.perf_counter()
    with tqdm(total=graded.height * passes, desc="learning", unit="event", disable=not progress) as bar:
        for p in range(passes):
            order = np.arange(graded.height) if p == 0 else rng.permutation(graded.height)
            for start in range(0, len(order), _CHUNK):
                idx = order[start : start + _CHUNK]
                before[idx] = policy.learn_many(
                    embeddings[idx],
                    [models[i] for i in idx],
                    qualities[idx],
                    costs[idx],
                    props[idx],
                    [cands[i] for i in idx],
                    prompt_tokens=tokens[idx],
                    observe_costs=p == 0,  # the cost model learns each logged cost once
                )
                bar.update(len(idx))
    # Self-normalised IPS over the last pass, each event scored before the policy learned from it.
    w = before / props
    norm = max(float(w.sum()), 1e-12)
    report = TrainReport(
        n_events=graded.height,
        n_ungraded=0,
        passes=passes,
        embed_seconds=0.0,
        learn_seconds=time.perf_counter() - t1,
        progressive_quality=float((w * qualities).sum() / norm),
        progressive_cost_usd=float((w * costs).sum() / norm),
        progressive_reward=float((w * reward(qualities, costs, config.lam)).sum() / norm),
    )
    return policy, report


def learn_online(
    policy: Policy,
    table: FullInfo,
    embeddings: npt.NDArray[np.float32],
    n_events: int,
    *,
    lams: tuple[float, float],
    seed: int = 0,
    progress: bool = False,
) -> LoggedEvents:
    """Serve a seeded stream of prompts drawn uniformly from ``table``: decide (exploring), observe only the
    chosen model's outcome, learn from it at once. The way the service runs, with the benchmark as the grader.
    Returns what it served, as logged events.

    Each request carries its own cost weight, drawn log-uniformly from ``lams = (low, high)`` (one value when
    ``low == high``), as tenants with different weights share one service: the policy explores where each of
    them decides. ``table.models`` must be the policy's catalog order and ``embeddings`` align with
    ``table.prompts``.
    """
    if table.models != policy.catalog.names:
        raise InvalidInput("online: the table's models must be the policy's catalog, in order")
    low, high = lams
    if not (0 < low <= high and np.isfinite(high)):
        raise InvalidInput(f"online: 'lams' must be a range 0 < low <= high, got {lams}")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(table.prompts), size=n_events)
    served = np.exp(rng.uniform(np.log(low), np.log(high), size=n_events))
    chosen = np.empty(n_events, dtype=np.int64)
    propensity = np.empty(n_events, dtype=np.float64)
    offered = table.offered
    names = policy.catalog.names
    contexts = policy.featurizer.shared(embeddings)
    tokens = [float(estimate_tokens(p)) for p in table.prompts]
    for i in tqdm(range(n_events), desc="online", unit="event", disable=not progress):
        r = int(rows[i])
        cands = None if offered[r].all() else [m for m, ok in zip(names, offered[r]) if ok]
        chosen[i], propensity[i] = policy.decide_and_learn(
            contexts[r], rng, table.quality[r], table.cost[r], cands, prompt_tokens=tokens[r], lam=float(served[i])
        )
    return LoggedEvents.served(table, rows, chosen, propensity, served, f"online:{low:g}-{high:g}")
