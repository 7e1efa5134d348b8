"""Shared by the benchmark scripts: a one-line description of the machine and percentile formatting."""

from __future__ import annotations

import os
import platform

import numpy as np

from router_ml import settings
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.fullinfo import FullInfo
from training.pipelines import catalog_for_benchmark


def machine() -> str:
    """CPU model, core count and Python version."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def summary(samples_ms: list[float]) -> str:
    """Median and p99 of latencies in milliseconds."""
    arr = np.asarray(samples_ms)
    return f"p50 {np.percentile(arr, 50):.2f} ms, p99 {np.percentile(arr, 99):.2f} ms (n={arr.size})"


def shared_table() -> tuple[Catalog, FullInfo]:
    """The shared benchmark as a full-information table, with the catalog its prices give."""
    path = settings.default_benchmark()
    bench = load_benchmark(path)
    catalog = catalog_for_benchmark(path, bench, None)
    return catalog, FullInfo.from_benchmark(bench, models=catalog.names)
