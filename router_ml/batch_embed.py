"""Embed the prompts of Parquet files into the on-disk embedding cache, in this process or on a Ray cluster.

Training re-reads every logged prompt's embedding from the cache (:class:`router_ml.embed.CachedEmbedder`), so
filling the cache first is all that scaling the embedding takes: ``router-ml embed --logs F [F ...]`` (and
``router-ml train --logs F --ray ...``, which runs it first). Without ``ray`` the cached embedder does the work here.
With ``ray`` (``auto``: start a local Ray with this machine's cores; else the address of a running cluster):

1. Ray Data reads the ``prompt`` column of the files (one or many);
2. each block keeps the prompts whose cache key is not known yet (the keys already cached are broadcast once) and
   drops repeats within the block; the rest is split into a few blocks per actor;
3. an actor pool embeds them, each actor loading the embedder once (the ONNX MiniLM by default);
4. the driver writes each batch of vectors to the cache in one SQLite transaction as it arrives: an interruption
   loses at most the batches in flight, and the cache never holds half an entry.

Ray retries a task whose worker dies, and restarts the actor. Ray is an optional extra
(``pip install 'router-ml[scale]'``); nothing here imports it unless ``ray`` is given.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from router_ml.embed import CachedEmbedder, EmbedderSpec, EmbeddingCache, text_key
from router_ml.encoders import build_embedder
from router_ml.errors import InvalidInput, MissingInput

BATCH = 64
"""Prompts per embedding call in an actor."""
LIGHT_CPU = 0.1
"""The CPU share Ray reserves for a task that reads or filters a block."""
READ_RESERVE = 1.0 + 2 * LIGHT_CPU
"""CPUs the actor pool leaves free: Ray Data lists the files with a one-CPU task, then reads and filters with light
ones. With whole CPUs each, a pool as large as the cluster would hold every CPU and starve the reading, forever."""


@dataclass(frozen=True)
class EmbedReport:
    """What a run did: distinct prompts embedded now, the embedder, the engine and the time it took."""

    embedder: str
    embedded: int
    cached: int
    engine: str
    seconds: float

    def format(self) -> str:
        """One line for the terminal."""
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (
            f"embedded {self.embedded} new prompts with {self.embedder} on {self.engine} in {self.seconds:.1f} s "
            f"({rate:.1f} prompts/s); the cache now holds {self.cached}"
        )


def _prompts(paths: Sequence[Path]) -> list[str]:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MissingInput(f"embed: no such file: {missing[0]}")
    try:
        frame = pl.scan_parquet([str(p) for p in paths]).select("prompt").unique(maintain_order=True).collect()
    except pl.exceptions.ColumnNotFoundError as exc:
        raise InvalidInput("embed: the files need a 'prompt' column") from exc
    return [p for p in frame["prompt"].to_list() if isinstance(p, str) and p]


def embed_files(
    paths: Sequence[Path],
    spec: EmbedderSpec,
    cache_path: Path,
    *,
    threads: int | None = None,
    ray: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> EmbedReport:
    """Fill the cache at ``cache_path`` with the embeddings of every prompt in ``paths`` (see the module docstring);
    ``threads`` are the encoder's threads in this process or in each actor."""
    if not paths:
        raise InvalidInput("embed: give at least one Parquet file")
    t0 = time.perf_counter()
    cache = EmbeddingCache(cache_path)
    try:
        if ray is None:
            inner = build_embedder(spec, threads=threads)
            prompts = _prompts(paths)
            before = cache.count(inner.name)
            CachedEmbedder(inner, cache).encode(prompts, progress=progress)
            name, engine = inner.name, "this process"
        else:
            name, engine, before = _on_ray(paths, spec, threads, cache, ray, workers, progress)
        return EmbedReport(name, cache.count(name) - before, cache.count(name), engine, time.perf_counter() - t0)
    finally:
        cache.close()


def _connect(address: str) -> None:
    """``auto``: start a local Ray with this machine's cores (never join one another process started); else join the
    cluster at ``address``."""
    import ray

    if address == "auto":
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)


def _keep_unknown(known: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A Ray Data batch function keeping the prompts of a block whose cache key is not among ``known`` (a Ray object
    holding the keys cached before the run), each once."""

    def keep_unknown(batch: dict[str, Any]) -> dict[str, Any]:
        import ray

        cached: set[bytes] = ray.get(known)
        seen: set[bytes] = set()
        keep = []
        for prompt in batch["prompt"]:
            if not isinstance(prompt, str) or not prompt:
                continue
            key = text_key(prompt)
            if key not in cached and key not in seen:
                seen.add(key)
                keep.append(prompt)
        return {"prompt": np.array(keep, dtype=object)}

    return keep_unknown


def _write(cache: EmbeddingCache, name: str, batches: Iterable[dict[str, Any]], progress: bool) -> None:
    """Write each batch of vectors to the cache in one transaction as it arrives (a retried batch only once)."""
    written: set[bytes] = set()
    bar = tqdm(desc=f"embedding on ray ({name})", unit="prompt", disable=not progress)
    for batch in batches:
        keys = [bytes(k) for k in batch["key"]]
        fresh = [i for i, k in enumerate(keys) if k not in written]
        if fresh:
            cache.put_many(name, [keys[i] for i in fresh], np.asarray(batch["vector"])[fresh])
            written.update(keys[i] for i in fresh)
        bar.update(len(fresh))
    bar.close()


class _Embed:
    """A Ray Data actor: builds the embedder once, then embeds batches of prompts."""

    def __init__(self, spec: EmbedderSpec, threads: int | None) -> None:
        self.encoder = build_embedder(spec, threads=threads)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        prompts = [str(p) for p in batch["prompt"]]
        return {"key": np.array([text_key(p) for p in prompts], dtype=object), "vector": self.encoder.encode(prompts)}


def _on_ray(
    paths: Sequence[Path],
    spec: EmbedderSpec,
    threads: int | None,
    cache: EmbeddingCache,
    address: str,
    workers: int | None,
    progress: bool,
) -> tuple[str, str, int]:
    import ray

    # the embedder's identity keys the cache; building it here also checks that the model loads
    name = build_embedder(spec, threads=threads).name
    before = cache.count(name)
    started = not ray.is_initialized()
    if started:
        _connect(address)
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        pool = workers or max(1, int(cpus))
        share = min(1.0, max(LIGHT_CPU, (cpus - READ_RESERVE) / pool))  # a reservation: threads are set apart
        ray.data.DataContext.get_current().enable_progress_bars = False  # the one bar is this module's
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        files = [str(p.resolve()) for p in paths]
        data = ray.data.read_parquet(files, num_cpus=LIGHT_CPU).select_columns(["prompt"])
        keep = _keep_unknown(ray.put(cache.keys(name)))
        unknown = data.map_batches(keep, batch_format="numpy", num_cpus=LIGHT_CPU)
        # a file is one block, and one block goes to one actor: split the work so that every actor has some. Ray Data
        # restarts a killed actor and retries its batch (an actor pool's default: max_restarts and max_task_retries -1)
        vectors = unknown.repartition(pool * 4).map_batches(
            _Embed,
            fn_constructor_args=(spec, threads),
            batch_size=BATCH,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=share,
        )
        _write(cache, name, vectors.iter_batches(batch_size=256, batch_format="numpy"), progress)
        return name, f"ray ({pool} workers)", before
    finally:
        if started:
            ray.shutdown()
