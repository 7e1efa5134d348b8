"""The ONNX Runtime embedder with real components: built once from the packaged MiniLM weights into a temp folder,
compared with sentence-transformers on real prompts, its on-disk model reused, and wired into policy folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from router_ml import onnx_embed, settings
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.cli import build_parser, embedder_spec
from router_ml.contracts import load_benchmark
from router_ml.embed import EmbedderSpec, default_model_path
from router_ml.encoders import build_embedder
from router_ml.features import FeatureConfig, Featurizer
from router_ml.onnx_embed import OnnxEmbedder, cached_onnx_path, onnx_threads
from router_ml.policy import Policy, PolicyConfig
from router_ml.router import Router
from router_ml.torch_embed import SentenceTransformerEmbedder


@pytest.fixture(scope="session")
def onnx_home(tmp_path_factory: pytest.TempPathFactory, onnx_minilm: OnnxEmbedder) -> Path:
    """A temp ROUTER_ML_HOME holding a copy of the session's exported model (exporting twice would only cost)."""
    home = tmp_path_factory.mktemp("onnx-home")
    (home / "onnx").mkdir()
    shutil.copyfile(onnx_minilm.onnx_path, home / "onnx" / onnx_minilm.onnx_path.name)
    return home


@pytest.fixture(scope="session")
def fast(onnx_home: Path) -> OnnxEmbedder:
    """The fp32 ONNX MiniLM, from the temp ROUTER_ML_HOME."""
    return OnnxEmbedder(home=onnx_home, threads=1)


@pytest.fixture(scope="session")
def real_prompts(shared_benchmark: Path) -> list[str]:
    """A dozen real MMLU-Pro prompts of every length: the shortest, the longest (truncated at 256) and between."""
    prompts = pl.read_parquet(shared_benchmark, columns=["prompt"])["prompt"].unique().sort().to_list()
    by_len = sorted(prompts, key=len)
    picks = [by_len[i * (len(by_len) - 1) // 9] for i in range(10)]
    return [*picks, "What is 2+2?", prompts[0][:40]]


def test_fast_embedder_matches_sentence_transformers(
    fast: OnnxEmbedder, minilm: SentenceTransformerEmbedder, real_prompts: list[str]
) -> None:
    assert fast.name == "all-MiniLM-L6-v2-onnx-fp32@256" and fast.spec == EmbedderSpec("onnx", None, 256)
    assert fast.name != minilm.name  # cached fp32-torch and onnx vectors never share a key
    assert max(fast.token_lengths(real_prompts)) == 256  # the longest prompt is truncated
    x = fast.encode(real_prompts)  # one call: mixed lengths go through the length buckets, in order
    ref = minilm.encode(real_prompts)
    assert x.shape == (len(real_prompts), 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    cos = (x * ref).sum(axis=1)
    assert cos.min() >= 0.999, cos
    single = np.stack([fast.encode([p])[0] for p in real_prompts[:3]])
    assert np.allclose(single, x[:3], atol=1e-5)  # padding inside a bucket does not change a row
    assert fast.encode([]).shape == (0, 384)


def test_built_model_is_cached_on_disk_and_reused(
    fast: OnnxEmbedder, onnx_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fast.onnx_path
    assert path.parent == onnx_home / "onnx" and path.name.startswith("all-MiniLM-L6-v2-")
    assert path == cached_onnx_path(default_model_path(), 256, "fp32", onnx_home, label="all-MiniLM-L6-v2")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind
    mtime = path.stat().st_mtime_ns

    def no_build(*args: object) -> None:
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(onnx_embed, "build_onnx", no_build)
    again = OnnxEmbedder(home=onnx_home, threads=1)
    assert again.onnx_path == path and path.stat().st_mtime_ns == mtime
    assert np.allclose(again.encode(["What is 2+2?"]), fast.encode(["What is 2+2?"]), atol=1e-6)


@pytest.mark.parametrize("bad", [0, 1, 513, 100000])
def test_bad_max_len_names_the_field(bad: int, onnx_home: Path) -> None:
    with pytest.raises(ValueError, match=r"max_len must be an integer from 2 to 512.*got"):
        OnnxEmbedder(home=onnx_home, max_len=bad)


def test_truncation_matches_sentence_transformers(fast: OnnxEmbedder, onnx_home: Path, real_prompts: list[str]) -> None:
    # The exported graph does not depend on max_len (its axes are dynamic), so seed the max_len=32 cache entry with
    # the built file instead of exporting again; the cache key still separates the two.
    short_path = cached_onnx_path(default_model_path(), 32, "fp32", onnx_home, label="all-MiniLM-L6-v2")
    assert short_path != fast.onnx_path
    shutil.copyfile(fast.onnx_path, short_path)
    trunc = OnnxEmbedder(home=onnx_home, max_len=32, threads=1)
    assert trunc.name == "all-MiniLM-L6-v2-onnx-fp32@32"
    long = max(real_prompts, key=len)
    assert trunc.token_lengths([long]) == [32]
    ref = SentenceTransformerEmbedder(max_seq_length=32).encode([long])
    got = trunc.encode([long])
    assert float(got[0] @ ref[0]) >= 0.999
    assert float(got[0] @ fast.encode([long])[0]) < 0.99  # truncation really changed the embedding


def test_thread_count_and_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_ML_ONNX_THREADS", raising=False)
    assert 1 <= onnx_threads() <= 4
    monkeypatch.setenv("ROUTER_ML_ONNX_THREADS", "2")
    assert onnx_threads() == 2 and onnx_threads(1) == 1
    monkeypatch.setenv("ROUTER_ML_ONNX_THREADS", "all")
    with pytest.raises(ValueError, match="ROUTER_ML_ONNX_THREADS"):
        onnx_threads()
    with pytest.raises(ValueError, match="embedder backend must be one of torch, onnx"):
        build_embedder(EmbedderSpec("tensorrt"))  # type: ignore[arg-type]
    args = build_parser().parse_args(["train", "--logs", "x.parquet", "--embedder-backend", "onnx", "--max-len", "128"])
    assert embedder_spec(args) == EmbedderSpec("onnx", None, 128)
    assert embedder_spec(build_parser().parse_args(["train", "--logs", "x.parquet"])).backend == "onnx", "the default"


def test_policy_folder_records_the_backend_and_rebuilds_it(
    fast: OnnxEmbedder,
    onnx_home: Path,
    small_benchmark: Path,
    real_prompts: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(settings.HOME_ENV, str(onnx_home))
    catalog = Catalog.from_benchmark(load_benchmark(small_benchmark))
    x = fast.encode(real_prompts)
    policy = Policy(catalog, Featurizer.fit(x, FeatureConfig(clusters=(2,))), PolicyConfig())
    PolicyArtifact(policy, embedder=fast.spec).save(tmp_path / "p")
    loaded = PolicyArtifact.load(tmp_path / "p")
    assert loaded.embedder == EmbedderSpec("onnx", None, 256)
    router = Router.from_artifact(loaded)
    assert isinstance(router.embedder, OnnxEmbedder) and router.embedder.name == fast.name
    decision = router.route(real_prompts[0], np.random.default_rng(0))
    assert decision.model in catalog.names
    # A folder written before specs were recorded names its encoder; one from before backends existed is torch;
    # a wrong backend is refused.
    meta_path = tmp_path / "p" / "policy.json"
    meta = json.loads(meta_path.read_text())
    del meta["embedder_spec"]
    meta_path.write_text(json.dumps(meta))
    assert PolicyArtifact.load(tmp_path / "p").embedder == EmbedderSpec("onnx", None, 256)
    meta_path.write_text(json.dumps(meta | {"embedder": "all-MiniLM-L6-v2@256"}))
    assert PolicyArtifact.load(tmp_path / "p").embedder == EmbedderSpec("torch", None, 256)
    meta_path.write_text(json.dumps(meta | {"embedder_backend": "tpu"}))
    with pytest.raises(ValueError, match="embedder_backend must be one of"):
        PolicyArtifact.load(tmp_path / "p")
