"""A policy on disk: one folder that holds everything needed to route again.

::

    policy/
      model.vw        VW model bytes
      catalog.toml    the models, in the order the policy's actions use
      features.json   feature config and embedding width
      centroids.npz   k-means centroids of each granularity
      policy.json     learner config, operating point, embedder spec (and name), update count, parent version,
                      and a day-one policy's prior (``day_one``, :mod:`router_ml.day_one`)
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
from router_ml.day_one import DayOnePrior
from router_ml.embed import EmbedderSpec
from router_ml.errors import InvalidInput, MissingInput
from router_ml.features import Featurizer
from router_ml.operating import OperatingPoint
from router_ml.policy import Policy, PolicyConfig

FILES = ("model.vw", "catalog.toml", "features.json", "centroids.npz", "policy.json")
COSTS = "costs.json"
"""Absent from folders written before the cost model: their costs start from the catalog prices alone."""


@dataclass
class PolicyArtifact:
    """A policy plus what travels with it: the spec of the encoder it was trained with (resolved, so it names one
    encoder) and the version it descends from."""

    policy: Policy
    embedder: EmbedderSpec
    parent_version: str | None = None

    def __post_init__(self) -> None:
        if self.embedder.max_len is None:
            raise InvalidInput("policy: the embedder spec must be resolved (max_len set): record the encoder's .spec")

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically and return its path."""

        def write(tmp: Path) -> None:
            (tmp / "model.vw").write_bytes(self.policy.to_bytes())
            (tmp / "catalog.toml").write_text(self.policy.catalog.to_toml(), encoding="utf-8")
            (tmp / "features.json").write_text(self.policy.featurizer.to_json(), encoding="utf-8")
            buf = io.BytesIO()
            np.savez(buf, **self.policy.featurizer.centroid_arrays())  # type: ignore[arg-type]
            (tmp / "centroids.npz").write_bytes(buf.getvalue())
            (tmp / COSTS).write_text(self.policy.costs.to_json(), encoding="utf-8")
            meta: dict[str, Any] = {
                "config": json.loads(self.policy.config.to_json()),
                "operating": self.policy.operating.to_dict(),
                "embedder": self.embedder.name,
                "embedder_spec": self.embedder.to_dict(),
                "updates": self.policy.updates,
                "parent_version": self.parent_version,
            }
            if self.policy.prior is not None:
                meta["day_one"] = self.policy.prior.to_dict()
            (tmp / "policy.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

        atomic_write_dir(path, write)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PolicyArtifact:
        """Read a folder written by :meth:`save`."""
        root = Path(path)
        missing = [f for f in FILES if not (root / f).exists()]
        if missing:
            raise MissingInput(f"policy folder {root} is missing {', '.join(missing)}")
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
            prior=DayOnePrior.from_dict(meta["day_one"]) if "day_one" in meta else None,
        )
        policy.updates = int(meta.get("updates", 0))
        if "embedder_spec" in meta:
            spec = EmbedderSpec.from_dict(meta["embedder_spec"])
        else:  # written before specs were recorded
            spec = EmbedderSpec.of_legacy_folder(
                str(meta["embedder"]), meta.get("embedder_path"), meta.get("embedder_backend")
            )
        return cls(policy=policy, embedder=spec, parent_version=meta.get("parent_version"))
