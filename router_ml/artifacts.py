"""A policy on disk: one folder that holds everything needed to route again.

::

    policy/
      model.vw        VW model bytes
      catalog.toml    the models, in the order the policy's actions use
      features.json   feature config and embedding width
      centroids.npz   k-means centroids of each granularity
      policy.json     learner config, operating point, embedder name, path and backend, update count, parent version
      costs.json      the cost model's observed completion lengths per model

The folder is written atomically: a crash leaves either the old folder or the new one.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.atomic import atomic_write_dir
from router_ml.catalog import Catalog
from router_ml.cost_model import CostModel
from router_ml.embed import BACKENDS, CachedEmbedder, Embedder, EmbeddingCache, backend_of, build_encoder
from router_ml.features import Featurizer
from router_ml.operating import OperatingPoint
from router_ml.policy import Policy, PolicyConfig

FILES = ("model.vw", "catalog.toml", "features.json", "centroids.npz", "policy.json")
COSTS = "costs.json"
"""Absent from folders written before the cost model: their costs start from the catalog prices alone."""


@dataclass
class PolicyArtifact:
    """A policy plus the metadata that travels with it.

    ``embedder_backend`` (``torch`` or ``onnx``) defaults to the backend the embedder's name says built it; a policy
    folder written before backends existed is ``torch``.
    """

    policy: Policy
    embedder: str
    embedder_path: str | None = None
    parent_version: str | None = None
    embedder_backend: str | None = None

    def __post_init__(self) -> None:
        if self.embedder_backend is None:
            self.embedder_backend = backend_of(self.embedder)
        if self.embedder_backend not in BACKENDS:
            raise ValueError(
                f"policy: embedder_backend must be one of {', '.join(BACKENDS)}, got {self.embedder_backend!r}"
            )

    @property
    def backend(self) -> str:
        """The embedder backend this policy was trained with."""
        return self.embedder_backend or backend_of(self.embedder)

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically and return its path."""

        def write(tmp: Path) -> None:
            (tmp / "model.vw").write_bytes(self.policy.model_bytes())
            (tmp / "catalog.toml").write_text(self.policy.catalog.to_toml(), encoding="utf-8")
            (tmp / "features.json").write_text(self.policy.featurizer.to_json(), encoding="utf-8")
            buf = io.BytesIO()
            np.savez(buf, **self.policy.featurizer.centroid_arrays())  # type: ignore[arg-type]
            (tmp / "centroids.npz").write_bytes(buf.getvalue())
            (tmp / COSTS).write_text(self.policy.costs.to_json(), encoding="utf-8")
            meta: dict[str, Any] = {
                "config": json.loads(self.policy.config.to_json()),
                "operating": self.policy.operating.to_dict(),
                "embedder": self.embedder,
                "embedder_path": self.embedder_path,
                "embedder_backend": self.backend,
                "updates": self.policy.updates,
                "parent_version": self.parent_version,
            }
            (tmp / "policy.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

        atomic_write_dir(path, write)
        return Path(path)

    def build_embedder(
        self, *, threads: int | None = None, batch_size: int = 16, cache: EmbeddingCache | None = None
    ) -> Embedder:
        """The embedder this policy was trained with (same backend, model and truncation), optionally behind
        ``cache``."""
        max_len = int(self.embedder.rsplit("@", 1)[1]) if "@" in self.embedder else None
        inner = build_encoder(
            self.backend, self.embedder_path, threads=threads, batch_size=batch_size, max_len=max_len
        )
        if inner.name != self.embedder:
            raise ValueError(f"policy was trained with embedder '{self.embedder}' but '{inner.name}' was loaded")
        return CachedEmbedder(inner, cache) if cache is not None else inner

    @classmethod
    def load(cls, path: str | Path) -> PolicyArtifact:
        """Read a folder written by :meth:`save`."""
        root = Path(path)
        missing = [f for f in FILES if not (root / f).exists()]
        if missing:
            raise FileNotFoundError(f"policy folder {root} is missing {', '.join(missing)}")
        meta = json.loads((root / "policy.json").read_text(encoding="utf-8"))
        with np.load(root / "centroids.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        featurizer = Featurizer.from_parts((root / "features.json").read_text(encoding="utf-8"), arrays)
        catalog = Catalog.load(root / "catalog.toml")
        # folders written before quality learning hold a VW model of the reward at their own lam
        config = PolicyConfig(**{"learns": "reward", **meta["config"]})
        costs = root / COSTS
        policy = Policy(
            catalog,
            featurizer,
            config,
            model_bytes=(root / "model.vw").read_bytes(),
            costs=CostModel.from_json(costs.read_text(encoding="utf-8"), catalog) if costs.exists() else None,
            operating=OperatingPoint.from_dict(meta["operating"]) if "operating" in meta else None,
        )
        policy.updates = int(meta.get("updates", 0))
        return cls(
            policy=policy,
            embedder=str(meta["embedder"]),
            embedder_path=meta.get("embedder_path"),
            parent_version=meta.get("parent_version"),
            embedder_backend=meta.get("embedder_backend"),
        )
