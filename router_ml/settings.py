"""Where router-ml keeps its state, and every environment variable it reads (this module is the only reader).

Everything lives under one project-local folder, ``$ROUTER_ML_HOME`` (default ``./.router-ml``):
the embedding cache, the MLflow store (SQLite plus an artifact folder), built ONNX embedders and run outputs.

=============================  =====================================================================
variable                       what it sets
=============================  =====================================================================
``ROUTER_ML_HOME``             the state folder (default ``./.router-ml``)
``ROUTER_ML_BENCHMARK``        the benchmark the quickstart uses (default the shared MMLU-Pro file)
``ROUTER_ML_ONNX_DIR``         where built ONNX embedders are kept (default ``$ROUTER_ML_HOME/onnx``)
``ROUTER_ML_BLAS_THREADS``     BLAS/OpenMP threads (default 1)
``ROUTER_ML_TORCH_THREADS``    torch threads of the torch embedder (default 1)
``ROUTER_ML_ONNX_THREADS``     ONNX Runtime threads of the ONNX embedder (default ``min(physical cores, 4)``)
``MLFLOW_TRACKING_URI``        the MLflow store (default ``sqlite:///$ROUTER_ML_HOME/mlflow.db``)
keys and upstream variables    named by the service's configuration (:func:`secret_list`, :func:`secret`)
=============================  =====================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

from router_ml.errors import InvalidInput

HOME_ENV = "ROUTER_ML_HOME"
BENCHMARK_ENV = "ROUTER_ML_BENCHMARK"
ONNX_DIR_ENV = "ROUTER_ML_ONNX_DIR"
BLAS_THREADS_ENV = "ROUTER_ML_BLAS_THREADS"
TORCH_THREADS_ENV = "ROUTER_ML_TORCH_THREADS"
ONNX_THREADS_ENV = "ROUTER_ML_ONNX_THREADS"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REPO_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """The state folder: ``$ROUTER_ML_HOME`` or ``./.router-ml``."""
    return Path(os.environ.get(HOME_ENV, ".router-ml")).resolve()


def embedding_cache_path() -> Path:
    """The SQLite file of cached embeddings."""
    return home() / "embeddings.sqlite"


def onnx_dir() -> Path:
    """Where built ONNX embedders are kept: ``$ROUTER_ML_ONNX_DIR`` or ``$ROUTER_ML_HOME/onnx``."""
    env = os.environ.get(ONNX_DIR_ENV)
    return Path(env).resolve() if env else home() / "onnx"


def _positive(name: str, default: str | None) -> int | None:
    raw = os.environ.get(name, default)
    if raw is None:
        return None
    if not raw.strip().isdigit() or int(raw) < 1:
        raise InvalidInput(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def blas_threads() -> int:
    """Threads for BLAS and OpenMP (k-means, numpy): ``$ROUTER_ML_BLAS_THREADS`` or 1.

    Measured on a shared 2-core machine: with two threads and another busy process, fitting the k-means features
    took 67.7 s against 8.3 s on one thread (``docs/decisions/0004-performance.md``).
    """
    found = _positive(BLAS_THREADS_ENV, "1")
    assert found is not None
    return found


def torch_threads() -> int:
    """Threads for the torch embedder: ``$ROUTER_ML_TORCH_THREADS`` or 1 (two torch threads on a shared 2-core
    machine slow down by an order of magnitude)."""
    found = _positive(TORCH_THREADS_ENV, "1")
    assert found is not None
    return found


def onnx_threads() -> int | None:
    """Intra-op threads for the ONNX embedder from ``$ROUTER_ML_ONNX_THREADS``; None when unset (the embedder then
    takes ``min(physical cores, 4)``)."""
    return _positive(ONNX_THREADS_ENV, None)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project-local SQLite store."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{home() / 'mlflow.db'}"


def offline_models() -> None:
    """Tell Hugging Face libraries never to reach the network (the weights ship in a package), unless the user
    said otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_mlflow() -> None:
    """Switch MLflow's telemetry off unless the user switched it on."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


def secret_list(name: str) -> list[str]:
    """The comma-separated values of the variable ``name`` (bearer keys), blanks dropped; [] when unset."""
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def secret(name: str) -> str | None:
    """The value of the variable ``name`` (an upstream's API key), None when unset."""
    return os.environ.get(name)


def default_benchmark() -> Path:
    """The benchmark the quickstart uses: ``$ROUTER_ML_BENCHMARK`` or the shared MMLU-Pro file."""
    env = os.environ.get(BENCHMARK_ENV)
    if env:
        return Path(env)
    return shared_data() / "mmlu_pro.parquet"


def decision_log_path() -> Path:
    """The service's decision log: ``$ROUTER_ML_HOME/serve/decisions.sqlite``."""
    return home() / "serve" / "decisions.sqlite"


def default_prices() -> Path:
    """The price list shipped beside the shared benchmark."""
    return shared_data() / "mmlu_pro_prices.csv"


def shared_data() -> Path:
    """The shared data folder beside the repository (``../shared/data``)."""
    return REPO_ROOT.parent / "shared" / "data"


def default_catalog() -> Path:
    """The catalog generated from the shared price list and kept in ``data/``."""
    return REPO_ROOT / "data" / "catalog.toml"
