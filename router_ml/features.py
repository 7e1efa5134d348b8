"""Features the policy sees, built straight into arrays of (index, value) per VW namespace.

Shared (prompt) namespaces:

* ``c``: one-hot k-means cluster ids of the embedding, at one or more granularities (e.g. 8, 32
  and 128 clusters). Crossed with the model id they give every model its own quality estimate per
  topic, coarse to fine.
* ``e``: the raw embedding, for a linear per-model correction when crossed with the model id.

Action namespaces: ``m``, a one-hot model id; ``p``, the log of the model's blended price, which
lets a model that was just added to the catalog start from what its price suggests.

Only the prompt's embedding enters; benchmark labels such as ``category`` never do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput

SHARED_NAMESPACES = ("c", "e")
ACTION_NAMESPACES = ("m", "p")

Indices = npt.NDArray[np.uint64]
Values = npt.NDArray[np.float32]
FeatureGroup = tuple[Indices, Values]
Context = dict[str, FeatureGroup]
"""One prompt's shared features, by namespace: what the policy scores every action against."""


def feature_index(namespace: str, key: str | int) -> int:
    """A stable 32-bit hash for feature ``key`` of ``namespace`` (FNV-1a)."""
    h = 0x811C9DC5
    for byte in f"{namespace}\x1f{key}".encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


@dataclass(frozen=True)
class FeatureConfig:
    """Which shared features to build and which shared x action namespaces VW crosses.

    ``clusters`` defaults to 8 and 32 k-means clusters (formerly 8, 32 and 128). With bandit feedback,
    the 128-cluster x model weights (about 40 prompts per cluster and model) are too noisy: near parity
    with the best model, their noise decides between gpt-4o and a model ten times cheaper. Chosen by
    validation inside the main TRAIN (3 sub-splits, salts v1/v2/v3, seeds 0 and 1, online bandit, 49-point
    lam sweep, costs as fractions of gpt-4o): gpt-4o's quality was reached at 0.051-0.112 of its cost
    (mean 0.075) with 8/32, against 0.070-0.705 (mean 0.210) with 8/32/128, better in 6 of 6 runs; 97.5%
    of it at mean 0.063 against 0.068; area under the frontier 0.734 against 0.723. A full-information
    check on the same splits agreed (8/32 reached parity at 0.05-0.12, 8/32/128 at 0.13-0.29).
    """

    clusters: tuple[int, ...] = (8, 32)
    embedding: bool = False
    interactions: tuple[str, ...] = ("cm",)
    seed: int = 0

    def __post_init__(self) -> None:
        if any(k < 2 for k in self.clusters):
            raise InvalidInput(f"features: every cluster count must be >= 2, got {self.clusters}")
        for pair in self.interactions:
            if len(pair) != 2 or pair[0] not in SHARED_NAMESPACES or pair[1] not in ACTION_NAMESPACES:
                raise InvalidInput(
                    f"features: interaction {pair!r} must pair a shared namespace {SHARED_NAMESPACES} "
                    f"with an action namespace {ACTION_NAMESPACES}"
                )
        if not self.embedding and any(pair[0] == "e" for pair in self.interactions):
            raise InvalidInput(
                "features: an interaction with 'e' needs the raw embedding (embedding=True,"
                " --embedding)"
            )
        if not self.clusters and any(pair[0] == "c" for pair in self.interactions):
            raise InvalidInput("features: an interaction with 'c' needs at least one cluster granularity")
        if not self.clusters and not self.embedding:
            raise InvalidInput("features: enable the embedding or at least one cluster granularity")

    @classmethod
    def parse(cls, clusters: str, embedding: bool, interactions: str, seed: int = 0) -> FeatureConfig:
        """Build from CLI strings such as ``clusters="8,32,128"`` and ``interactions="cm,em"``."""
        try:
            ks = tuple(int(k) for k in clusters.split(",") if k.strip())
        except ValueError as exc:
            raise InvalidInput(f"features: --clusters must be comma-separated integers, got {clusters!r}") from exc
        pairs = tuple(p.strip() for p in interactions.split(",") if p.strip())
        return cls(clusters=ks, embedding=embedding, interactions=pairs, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class Featurizer:
    """A fitted feature map: the config plus the k-means centroids of each granularity."""

    config: FeatureConfig
    dim: int
    centroids: list[npt.NDArray[np.float32]] = field(default_factory=list)

    @classmethod
    def fit(cls, embeddings: npt.NDArray[np.float32], config: FeatureConfig) -> Featurizer:
        """Fit k-means at each granularity on (distinct) prompt embeddings."""
        from sklearn.cluster import KMeans

        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise InvalidInput("features: need a non-empty 2-D embedding matrix to fit clusters")
        distinct = np.unique(embeddings, axis=0)
        centroids = []
        for k in config.clusters:
            if distinct.shape[0] < k:
                raise InvalidInput(
                    f"features: {k} clusters need at least {k} distinct prompts, got"
                    f" {distinct.shape[0]}"
                )
            km = KMeans(n_clusters=k, n_init=3, random_state=config.seed).fit(distinct)
            centroids.append(km.cluster_centers_.astype(np.float32))
        return cls(config=config, dim=int(embeddings.shape[1]), centroids=centroids)

    def assign(self, embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
        """Nearest-centroid ids, shape ``(n, len(clusters))``."""
        out = np.empty((embeddings.shape[0], len(self.centroids)), dtype=np.int64)
        sq = (embeddings * embeddings).sum(axis=1, keepdims=True)
        for j, c in enumerate(self.centroids):
            d = sq - 2.0 * embeddings @ c.T + (c * c).sum(axis=1)[None, :]
            out[:, j] = d.argmin(axis=1)
        return out

    def shared(self, embeddings: npt.NDArray[np.float32]) -> list[Context]:
        """Shared-context features for each row of ``embeddings``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInput(f"features: expected embeddings of width {self.dim}, got shape {embeddings.shape}")
        emb_index = _embedding_indices(self.dim)
        cluster_ids = self.assign(embeddings) if self.centroids else None
        cluster_table = _cluster_indices(tuple(len(c) for c in self.centroids))
        ones = np.ones(len(self.centroids), dtype=np.float32)
        rows: list[Context] = []
        for i in range(embeddings.shape[0]):
            groups: dict[str, FeatureGroup] = {}
            if cluster_ids is not None:
                idx = np.array([cluster_table[j][cid] for j, cid in enumerate(cluster_ids[i])], dtype=np.uint64)
                groups["c"] = (idx, ones)
            if self.config.embedding:
                groups["e"] = (emb_index, embeddings[i])
            rows.append(groups)
        return rows

    def dense(self, embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The prompt as one dense matrix ``[embedding | one-hot clusters per granularity]`` for a dense learner
        (the reward model). The raw embedding is always included, whether or not VW gets it as namespace ``e``.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInput(f"features: expected embeddings of width {self.dim}, got shape {embeddings.shape}")
        n = embeddings.shape[0]
        parts: list[npt.NDArray[np.float32]] = [np.asarray(embeddings, dtype=np.float32)]
        if self.centroids:
            ids = self.assign(np.asarray(embeddings, dtype=np.float32))
            for j, centroids in enumerate(self.centroids):
                onehot = np.zeros((n, centroids.shape[0]), dtype=np.float32)
                onehot[np.arange(n), ids[:, j]] = 1.0
                parts.append(onehot)
        return np.concatenate(parts, axis=1)

    def to_json(self) -> str:
        """Config and shape as JSON (centroids go to :meth:`centroid_arrays`)."""
        return json.dumps({"config": self.config.to_dict(), "dim": self.dim})

    def centroid_arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """Centroids keyed for ``np.savez``."""
        return {f"k{len(c)}_{j}": c for j, c in enumerate(self.centroids)}

    @classmethod
    def from_parts(cls, meta_json: str, arrays: dict[str, npt.NDArray[np.float32]]) -> Featurizer:
        """Inverse of :meth:`to_json` plus :meth:`centroid_arrays`."""
        meta = json.loads(meta_json)
        cfg = meta["config"]
        config = FeatureConfig(
            clusters=tuple(cfg["clusters"]),
            embedding=bool(cfg["embedding"]),
            interactions=tuple(cfg["interactions"]),
            seed=int(cfg["seed"]),
        )
        ordered = sorted(arrays.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))
        return cls(config=config, dim=int(meta["dim"]), centroids=[np.asarray(v, np.float32) for _, v in ordered])


def action_features(names: Sequence[str], blended_prices: Sequence[float]) -> list[dict[str, FeatureGroup]]:
    """Per-model action features: one-hot id in ``m`` and log price in ``p``."""
    out = []
    for name, price in zip(names, blended_prices):
        out.append(
            {
                "m": (np.array([feature_index("m", name)], np.uint64), np.ones(1, np.float32)),
                "p": (np.array([feature_index("p", "log_price")], np.uint64), np.array([np.log1p(price)], np.float32)),
            }
        )
    return out


_EMB_CACHE: dict[int, Indices] = {}
_CLUSTER_CACHE: dict[tuple[int, ...], list[list[int]]] = {}


def _embedding_indices(dim: int) -> Indices:
    if dim not in _EMB_CACHE:
        _EMB_CACHE[dim] = np.array([feature_index("e", i) for i in range(dim)], dtype=np.uint64)
    return _EMB_CACHE[dim]


def _cluster_indices(sizes: tuple[int, ...]) -> list[list[int]]:
    if sizes not in _CLUSTER_CACHE:
        _CLUSTER_CACHE[sizes] = [[feature_index("c", f"{k}:{i}") for i in range(k)] for k in sizes]
    return _CLUSTER_CACHE[sizes]
