"""The notebooks: committed without outputs, and executed headless on a small slice (any cell error fails).

Each notebook runs with papermill in a fresh kernel that inherits the test's ``ROUTER_ML_HOME`` (the ``home``
fixture: a temp MLflow store plus the session's embedding cache), so the user's store is never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import nbformat
import pytest

from router_ml import mlflow_schema, settings
from router_ml.contracts import load_benchmark
from router_ml.embed import EmbedderSpec
from router_ml.encoders import Embedders
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import learn_online
from router_ml.policy import PolicyConfig
from router_ml.registry import PolicyRegistry
from router_ml.simulate import simulate
from tests.conftest import slice_benchmark
from tests.servekit import sqlite_store
from training.evaluate import run_evaluate
from training.pipelines import catalog_for_benchmark, run_train, write_parquet

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["counterfactual_savings.ipynb", "policy_versions.ipynb", "day_one.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs_and_parameterised(name: str) -> None:
    nb = nbformat.read(
        NOTEBOOKS / name, as_version=4
    )
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {i} has outputs; strip them before committing"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: needs exactly one code cell tagged 'parameters'"


def _execute(name: str, out: Path, parameters: dict[str, object]) -> nbformat.NotebookNode:
    import papermill

    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    nb = nbformat.read(
        out, as_version=4
    )
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return cast(nbformat.NotebookNode, nb)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})
    )


@pytest.fixture(scope="module")
def notebook_benchmark(shared_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 prompts x 31 models."""
    return slice_benchmark(shared_benchmark, 150, tmp_path_factory.mktemp("nb") / "bench.parquet")


def test_counterfactual_savings_runs(notebook_benchmark: Path, home: Path, tmp_path: Path) -> None:
    nb = _execute(
        "counterfactual_savings.ipynb",
        tmp_path / "out.ipynb",
        {
            "BENCHMARK": str(notebook_benchmark),
            "EVENTS_PER_PROMPT": 12.0,
            "CLUSTERS": "4,8",
            "LAM_SWEEP": "0,0.01,0.1,1",
        },
    )
    assert _images(nb) >= 5  # savings bars, model mix, frontier, estimates vs truth, spend vs lam
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "quality intervals that contain the truth" in text
    assert (home / "notebooks" / "frontier.png").exists()


def test_policy_versions_runs(notebook_benchmark: Path, home: Path, tmp_path: Path) -> None:
    """A store with a batch version (champion), a warm-started child and an online snapshot of it."""
    bench = load_benchmark(notebook_benchmark)
    catalog = catalog_for_benchmark(notebook_benchmark, bench, None)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    train_logs, eval_logs = tmp_path / "train.parquet", tmp_path / "eval.parquet"
    write_parquet(simulate(table, 1500, seed=0), train_logs)
    write_parquet(simulate(table, 600, seed=1), eval_logs)
    registry = PolicyRegistry(sqlite_store(home))
    embedders = Embedders(cache_path=settings.embedding_cache_path())
    embedder = embedders.get(EmbedderSpec())
    kwargs = dict(catalog=catalog, features=FeatureConfig(clusters=(4, 8)), passes=1, embedder=embedder)
    first = run_train(train_logs, config=PolicyConfig(lam=0.05), registry=registry, **kwargs)  # type: ignore[arg-type]
    registry.promote(first.version.version)
    child = run_train(
        train_logs,
        config=PolicyConfig(lam=0.05),
        registry=registry,
        warm_start=first.version.version,
        **kwargs,  # type: ignore[arg-type]
    )
    artifact, info = registry.load(child.version.version)
    embeddings = embedder.encode(table.prompts)
    online = learn_online(artifact.policy, table, embeddings, 500, lams=(0.001, 0.1), seed=2)
    artifact.parent_version = info.version
    registry.log_version(
        artifact,
        metrics={"n_events": float(online.n)},
        tags=mlflow_schema.online_tags(info.version, info.version, "a-log", 0),
        run_name="online-snapshot",
    )
    for version in ("1", "3"):
        run_evaluate(version, eval_logs, tracking_uri=None, embedders=embedders)

    nb = _execute(
        "policy_versions.ipynb",
        tmp_path / "out.ipynb",
        {"LOGS": str(eval_logs), "DIFF_PROMPTS": 100},
    )
    assert _images(nb) >= 1
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "online" in shown and "champion" in shown


def test_day_one_runs(shared_benchmark: Path, home: Path, tmp_path: Path) -> None:
    """A small stream (two seeds, 600 graded requests) on the shared benchmark's first 400 TRAIN prompts."""
    nb = _execute(
        "day_one.ipynb",
        tmp_path / "out.ipynb",
        {"BENCHMARK": str(shared_benchmark), "SEEDS": 2, "CHECKPOINTS": "100,300,600", "MAX_PROMPTS": 400},
    )
    assert _images(nb) >= 1
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "shape: (4, 9)" in shown  # the summary: checkpoint 0 and the three asked for
