"""The layer check (import-linter's contracts in pyproject.toml) holds on the tree, and fails on a forbidden import:
the library importing a layer above it, the service importing the training jobs, an estimator importing the policy,
and an import cycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
LAYERS = "training and serve stand on router_ml, and not on each other"
ESTIMATORS = "the estimators import nothing from the policy"
ACYCLIC = "no import cycles between modules"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the three packages and pyproject.toml, to break on purpose."""
    for package in ("router_ml", "training", "serve"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "named"),
    [
        ("router_ml/catalog.py", "import training.pipelines", LAYERS, "router_ml.catalog -> training.pipelines"),
        ("serve/auth.py", "from training import evaluate", LAYERS, "serve.auth -> training.evaluate"),
        ("router_ml/estimators.py", "from router_ml import policy", ESTIMATORS, "estimators -> router_ml.policy"),
        ("router_ml/embed.py", "from router_ml import onnx_embed", ACYCLIC, ".onnx_embed -> .embed"),
    ],
)
def test_a_forbidden_import_breaks_the_build(tree: Path, module: str, line: str, contract: str, named: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate violation\n")
    done = lint(tree)
    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout
    assert named in done.stdout, done.stdout
