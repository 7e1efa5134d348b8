"""Where router-ml keeps its state, and the defaults every entry point shares.

Everything lives under one project-local folder, ``$ROUTER_ML_HOME`` (default ``./.router-ml``):
the embedding cache, the MLflow store (SQLite plus an artifact folder) and run outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ROUTER_ML_HOME"
BENCHMARK_ENV = "ROUTER_ML_BENCHMARK"
REPO_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """The state folder: ``$ROUTER_ML_HOME`` or ``./.router-ml``."""
    return Path(os.environ.get(HOME_ENV, ".router-ml")).resolve()


def embedding_cache_path() -> Path:
    """The SQLite file of cached embeddings."""
    return home() / "embeddings.sqlite"


def decision_log_path() -> Path:
    """The service's decision log: ``$ROUTER_ML_HOME/serve/decisions.sqlite``."""
    return home() / "serve" / "decisions.sqlite"


def default_benchmark() -> Path:
    """The benchmark the quickstart uses: ``$ROUTER_ML_BENCHMARK`` or the shared MMLU-Pro file."""
    env = os.environ.get(BENCHMARK_ENV)
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data" / "mmlu_pro.parquet"


def default_prices() -> Path:
    """The price list shipped beside the shared benchmark."""
    return REPO_ROOT.parent / "shared" / "data" / "mmlu_pro_prices.csv"


def default_catalog() -> Path:
    """The catalog generated from the shared price list and kept in ``data/``."""
    return REPO_ROOT / "data" / "catalog.toml"
