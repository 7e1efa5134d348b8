"""Policy versions in a real MLflow store (SQLite + artifact folder in a temp dir)."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.embed import CachedEmbedder
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import train_policy
from router_ml.policy import PolicyConfig
from router_ml.registry import PolicyRegistry, RegistryError, load_policy
from router_ml.simulate import simulate
from tests.servekit import sqlite_store


@pytest.fixture(scope="module")
def trained(small_benchmark: Path, embedder: CachedEmbedder) -> PolicyArtifact:
    bench = load_benchmark(small_benchmark)
    catalog = Catalog.from_benchmark(bench)
    logs = simulate(FullInfo.from_benchmark(bench, models=catalog.names), 600, seed=0)
    policy, _ = train_policy(logs, embedder, catalog, PolicyConfig(), FeatureConfig(clusters=(4,)), progress=False)
    return PolicyArtifact(policy, embedder=embedder.spec)


def test_register_promote_and_load_by_alias(
    tmp_path: Path,
    trained: PolicyArtifact,
    embedder: CachedEmbedder,
    small_benchmark: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = PolicyRegistry(sqlite_store(tmp_path))
    with warnings.catch_warnings(record=True) as logged:
        warnings.simplefilter("always")
        v1 = reg.log_version(trained, params={"data_path": "a"}, metrics={"n_events": 600.0}, tags={"source": "batch"})
    base = "file:/a folder/it's"  # a policy folder's path may hold a quote
    v2 = reg.log_version(
        trained, params={"data_path": "b"}, metrics={"n_events": 600.0}, tags={"source": "online", "base": base}
    )
    assert (v1.version, v2.version) == ("1", "2")
    assert (tmp_path / "mlartifacts").is_dir(), "artifacts live beside the local store"
    run = mlflow.MlflowClient(reg.tracking_uri).get_run(v1.run_id)
    assert run.data.params["data_path"] == "a"
    assert run.data.params["lam"] == str(trained.policy.config.lam), "every version logs its learner's settings"
    assert run.data.params["embedder"] == trained.embedder.name
    assert run.data.metrics["n_events"] == 600.0

    with pytest.raises(RegistryError, match="champion"):
        reg.resolve("champion")
    reg.promote("2")
    assert reg.resolve("champion").version == "2"
    assert reg.resolve("models:/router-ml@champion").version == "2"
    reg.promote("1")
    assert reg.resolve("champion").version == "1"
    assert [v.version for v in reg.versions()] == ["2", "1"]
    # the newest version with every tag asked for, found by one search
    assert reg.newest({"source": "batch"}) == reg.resolve("1")
    assert reg.newest({"source": "online", "base": base}) == reg.resolve("2")
    assert reg.newest({"source": "batch", "base": base}) is None

    loaded, info = reg.load("champion")
    assert info.version == "1"
    prompts = FullInfo.from_benchmark(load_benchmark(small_benchmark)).prompts[:10]
    x = embedder.encode(prompts)
    tokens = [estimate_tokens(p) for p in prompts]
    assert np.allclose(
        loaded.policy.predict_many(x, prompt_tokens=tokens), trained.policy.predict_many(x, prompt_tokens=tokens)
    )

    # the registered model is a working MLflow pyfunc (for a user whose MLflow points at the store) with explicit
    # requirements that install the default ONNX backend and the k-means features
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", reg.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model("models:/router-ml@champion")
    out = pyfunc.predict(pd.DataFrame({"prompt": prompts[:3]}))
    assert list(out.columns) == ["model", "probability"]
    assert set(out["model"]) <= set(trained.policy.catalog.names)
    reqs = Path(mlflow.artifacts.download_artifacts("models:/router-ml/1/requirements.txt")).read_text().split()
    for needed in ("torch==2.13.0", "onnxruntime>=1.20", "onnx>=1.16", "scikit-learn>=1.3", "router-ml"):
        assert needed in reqs, reqs
    assert not [w for w in logged if "input example" in str(w.message)], "a version is logged with an input example"


def test_a_failed_run_leaves_no_version(
    tmp_path: Path, trained: PolicyArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = PolicyRegistry(sqlite_store(tmp_path))

    def broken(self: PolicyArtifact, path: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(PolicyArtifact, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        reg.log_version(trained, params={}, metrics={})
    assert reg.versions() == []
    runs = mlflow.MlflowClient(reg.tracking_uri).search_runs([reg.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_load_policy_from_a_folder(tmp_path: Path, trained: PolicyArtifact) -> None:
    trained.save(tmp_path / "policy")
    loaded = load_policy(str(tmp_path / "policy"))
    assert loaded.label.startswith("file:") and loaded.version is None
    assert loaded.artifact.policy.catalog == trained.policy.catalog
