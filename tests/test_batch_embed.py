"""Batch embedding into the on-disk cache, on a real local Ray (2 CPUs) and in this process.

The vectors Ray's actors write must be the very ones the single-process encoder makes (cosine 1 within float
tolerance), a run must embed only the prompts the cache lacks, and a worker killed mid-run must neither lose the job
nor leave a half-written entry. The Ray run is the scale-out deployment's embedding job as written in
deploy/compose.yaml (its Parquet path swapped for the test files), through the CLI, starting its own local Ray.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pytest
import yaml

from router_ml import settings
from router_ml.batch_embed import embed_files
from router_ml.cli import main
from router_ml.embed import CachedEmbedder, EmbedderSpec, EmbeddingCache, text_key
from router_ml.errors import InvalidInput, MissingInput

pytest.importorskip("ray")
N_PROMPTS = 120
COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "compose.yaml"


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


def _job(paths: list[Path]) -> list[str]:
    """The deployment's embedding job (deploy/compose.yaml) on ``paths``, as ``router-ml`` arguments."""
    command: list[str] = yaml.safe_load(COMPOSE.read_text())["services"]["jobs"]["command"]
    assert command[0] == "router-ml" and command.count("/data/logs.parquet") == 1, command
    at = command.index("/data/logs.parquet")
    return [*command[1:at], *map(str, paths), *command[at + 1 :]]


def test_the_deployed_job_on_ray_embeds_only_what_the_cache_lacks_though_a_worker_is_killed(
    prompt_files: tuple[list[Path], list[str]],
    embedder: CachedEmbedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths, prompts = prompt_files
    monkeypatch.setenv(settings.HOME_ENV, str(tmp_path))
    known = prompts[::3]  # already in the cache: the job must not embed them again
    cache = EmbeddingCache(settings.embedding_cache_path())
    cache.put_many(embedder.name, [text_key(p) for p in known], embedder.encode(known))
    cache.close()
    stop, killed = threading.Event(), list[int]()
    killer = threading.Thread(target=_kill_one_actor, args=(stop, killed), daemon=True)
    killer.start()
    try:
        # `--ray auto` starts a local Ray with this machine's cores; two actors whatever the machine
        assert main([*_job(paths), "--workers", "2"]) == 0
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no embedding actor was seen to kill"
    out = capsys.readouterr().out
    assert f"embedded {len(prompts) - len(known)} new prompts with {embedder.name} on ray (2 workers)" in out, out
    assert f"the cache now holds {len(prompts)}" in out, out
    # Ray restarted the actor and retried its batch: every prompt is there once, each vector whole and the very one
    # the single-process encoder makes
    _assert_same_vectors(_cached(settings.embedding_cache_path(), embedder.name, prompts), embedder.encode(prompts))


def test_bad_input_is_one_clear_error(prompt_files: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    with pytest.raises(MissingInput, match="no such file"):
        embed_files([tmp_path / "nope.parquet"], EmbedderSpec(), tmp_path / "c.sqlite", progress=False)
    no_prompt = tmp_path / "np.parquet"
    pl.DataFrame({"text": ["a"]}).write_parquet(no_prompt)
    with pytest.raises(InvalidInput, match="'prompt' column"):
        embed_files([no_prompt], EmbedderSpec(), tmp_path / "c.sqlite", progress=False)
    with pytest.raises(InvalidInput, match="at least one"):
        embed_files([], EmbedderSpec(), tmp_path / "c.sqlite", progress=False)
