"""Batch embedding into the on-disk cache, on a real local Ray (2 CPUs) and in this process.

The vectors Ray's actors write must be the very ones the single-process encoder makes (cosine 1 within float
tolerance), a second run must embed nothing, and a worker killed mid-run must neither lose the job nor leave a
half-written entry.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pytest

from router_ml.batch_embed import embed_files
from router_ml.embed import CachedEmbedder, EmbedderSpec, EmbeddingCache, text_key
from router_ml.errors import InvalidInput, MissingInput

pytest.importorskip("ray")
N_PROMPTS = 120


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray (2 CPUs) for the module's runs: `embed_files` joins a Ray already started in its process, and
    starting one costs ~10 s. Starting a local Ray of its own is `router-ml embed`'s path, run by test_deploy."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def prompt_files(learning_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    """Two Parquet files of logged prompts (with a repeat across them), and the distinct prompts they hold."""
    prompts = pl.read_parquet(learning_benchmark).select("prompt").unique(maintain_order=True)["prompt"].to_list()
    prompts = prompts[:N_PROMPTS]
    folder = tmp_path_factory.mktemp("prompts")
    first, second = folder / "a.parquet", folder / "b.parquet"
    pl.DataFrame({"prompt": prompts[:80]}).write_parquet(first)
    pl.DataFrame({"prompt": prompts[60:]}).write_parquet(second)  # 20 prompts are in both files
    return [first, second], prompts


def _cached(cache_path: Path, name: str, prompts: list[str]) -> np.ndarray:
    cache = EmbeddingCache(cache_path)
    try:
        found = cache.get_many(name, [text_key(p) for p in prompts])
    finally:
        cache.close()
    assert len(found) == len(prompts), f"{len(prompts) - len(found)} prompts missing from the cache"
    return np.stack([found[text_key(p)] for p in prompts])


def _assert_same_vectors(got: np.ndarray, want: np.ndarray) -> None:
    cosine = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() > 1 - 1e-5, cosine.min()


def test_in_process_embedding_writes_the_same_cache(
    prompt_files: tuple[list[Path], list[str]], embedder: CachedEmbedder, tmp_path: Path
) -> None:
    paths, prompts = prompt_files
    cache_path = tmp_path / "embeddings.sqlite"
    report = embed_files(paths[:1], EmbedderSpec(), cache_path, threads=1, progress=False)
    assert (report.engine, report.embedded) == ("this process", 80)
    _assert_same_vectors(_cached(cache_path, report.embedder, prompts[:80]), embedder.encode(prompts[:80]))


def _ours(proc: psutil.Process) -> bool:
    """A descendant of this test process (the local Ray it started), not another job's Ray on the machine."""
    try:
        return any(parent.pid == os.getpid() for parent in proc.parents())
    except psutil.Error:
        return False


def _kill_one_actor(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray embedding actor of ours seen, once it has had a moment to start working."""
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "_Embed" in cmdline and _ours(proc):
                time.sleep(1.0)
                try:
                    os.kill(proc.info["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(proc.info["pid"])
                return
        stop.wait(0.1)


def test_ray_fills_the_cache_right_though_a_worker_is_killed_and_a_second_run_embeds_nothing(
    prompt_files: tuple[list[Path], list[str]], embedder: CachedEmbedder, tmp_path: Path, local_ray: None
) -> None:
    paths, prompts = prompt_files
    cache_path = tmp_path / "embeddings.sqlite"
    stop, killed = threading.Event(), list[int]()
    killer = threading.Thread(target=_kill_one_actor, args=(stop, killed), daemon=True)
    killer.start()
    try:
        report = embed_files(paths, EmbedderSpec(), cache_path, threads=1, ray="auto", workers=2, progress=False)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no embedding actor was seen to kill"
    assert report.engine == "ray (2 workers)" and report.embedder == embedder.name
    # Ray restarted the actor and retried its batch: every prompt is there once, each vector whole and the very one
    # the single-process encoder makes
    assert report.embedded == len(prompts) == report.cached
    _assert_same_vectors(_cached(cache_path, report.embedder, prompts), embedder.encode(prompts))

    again = embed_files(paths, EmbedderSpec(), cache_path, threads=1, ray="auto", workers=2, progress=False)
    assert again.embedded == 0 and again.cached == len(prompts)


def test_bad_input_is_one_clear_error(prompt_files: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    with pytest.raises(MissingInput, match="no such file"):
        embed_files([tmp_path / "nope.parquet"], EmbedderSpec(), tmp_path / "c.sqlite", progress=False)
    no_prompt = tmp_path / "np.parquet"
    pl.DataFrame({"text": ["a"]}).write_parquet(no_prompt)
    with pytest.raises(InvalidInput, match="'prompt' column"):
        embed_files([no_prompt], EmbedderSpec(), tmp_path / "c.sqlite", progress=False)
    with pytest.raises(InvalidInput, match="at least one"):
        embed_files([], EmbedderSpec(), tmp_path / "c.sqlite", progress=False)
