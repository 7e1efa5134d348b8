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


ONNX_DIR_ENV = "ROUTER_ML_ONNX_DIR"
BLAS_THREADS_ENV = "ROUTER_ML_BLAS_THREADS"


def onnx_dir() -> Path:
    """Where built ONNX embedders are kept: ``$ROUTER_ML_ONNX_DIR`` or ``$ROUTER_ML_HOME/onnx``."""
    env = os.environ.get(ONNX_DIR_ENV)
    return Path(env).resolve() if env else home() / "onnx"


def blas_threads() -> int:
    """Threads for BLAS and OpenMP (k-means, numpy): ``$ROUTER_ML_BLAS_THREADS`` or 1.

    Measured on a shared 2-core machine: with two threads and another busy process, fitting the k-means features
    took 67.7 s against 8.3 s on one thread. One thread never collapses; set more on a dedicated machine.
    """
    raw = os.environ.get(BLAS_THREADS_ENV, "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{BLAS_THREADS_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


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
    return shared_data() / "mmlu_pro_prices.csv"


def shared_data() -> Path:
    """The shared data folder beside the repository (``../shared/data``)."""
    return REPO_ROOT.parent / "shared" / "data"


def default_catalog() -> Path:
    """The catalog generated from the shared price list and kept in ``data/``."""
    return REPO_ROOT / "data" / "catalog.toml"
