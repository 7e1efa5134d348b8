"""Embeddings with the real packaged MiniLM, and the persistent cache in front of it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from router_ml.embed import CachedEmbedder, EmbedderSpec, EmbeddingCache, Matrix, MemoryCache, default_model_path
from router_ml.torch_embed import SentenceTransformerEmbedder, torch_threads


class CountingEmbedder:
    """Wraps a real embedder and counts the texts it is asked to embed."""

    def __init__(self, inner: SentenceTransformerEmbedder) -> None:
        self.inner = inner
        self.seen: list[str] = []

    @property
    def spec(self) -> EmbedderSpec:
        return self.inner.spec

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        self.seen.extend(texts)
        return self.inner.encode(texts)


def test_minilm_is_offline_unit_norm_and_semantic(minilm: SentenceTransformerEmbedder) -> None:
    assert minilm.name == "all-MiniLM-L6-v2@256"
    x = minilm.encode(["What is the integral of x^2?", "Compute the antiderivative of x squared.", "Who wrote Hamlet?"])
    assert x.shape == (3, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2


def test_cache_embeds_each_text_once_and_persists(minilm: SentenceTransformerEmbedder, tmp_path: Path) -> None:
    counting = CountingEmbedder(minilm)
    cached = CachedEmbedder(counting, EmbeddingCache(tmp_path / "c.sqlite"), chunk_size=2)
    texts = ["alpha question", "beta question", "alpha question", "gamma question"]
    first = cached.encode(texts)
    assert sorted(counting.seen) == ["alpha question", "beta question", "gamma question"]
    assert np.array_equal(first[0], first[2])
    counting.seen.clear()
    store = EmbeddingCache(tmp_path / "c.sqlite")
    again = CachedEmbedder(counting, store).encode(texts)
    assert counting.seen == []
    assert np.array_equal(first, again)
    assert store.count(minilm.name) == 3
    assert np.allclose(first, minilm.encode(texts), atol=1e-6)


def test_memory_cache_embeds_a_repeat_once_and_keeps_only_the_most_recent(
    minilm: SentenceTransformerEmbedder,
) -> None:
    counting = CountingEmbedder(minilm)
    two = 2 * (16 + 4 * minilm.dim)  # room for two vectors and their keys
    memo = CachedEmbedder(counting, MemoryCache(two))
    first = memo.encode(["alpha question", "beta question", "alpha question"])
    assert sorted(counting.seen) == ["alpha question", "beta question"]
    counting.seen.clear()
    assert np.array_equal(memo.encode(["beta question"])[0], first[1]) and counting.seen == []
    memo.encode(["gamma question"])  # beta was used last: alpha, the least recently used, leaves
    counting.seen.clear()
    memo.encode(["alpha question", "gamma question", "beta question"])
    assert counting.seen == ["alpha question"]
    assert np.allclose(first, minilm.encode(["alpha question", "beta question", "alpha question"]), atol=1e-6)


def test_other_local_model_by_path_and_truncation(tmp_path: Path) -> None:
    emb = SentenceTransformerEmbedder(default_model_path(), max_seq_length=32)
    assert emb.spec == EmbedderSpec("torch", str(default_model_path()), 32)
    assert emb.name == f"{default_model_path().name}@32"
    assert emb.encode(["word " * 200]).shape == (1, 384)
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model"):
        SentenceTransformerEmbedder(tmp_path)


def test_thread_count_is_deliberate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_ML_TORCH_THREADS", raising=False)
    assert torch_threads() == 1
    monkeypatch.setenv("ROUTER_ML_TORCH_THREADS", "2")
    assert torch_threads() == 2
    monkeypatch.setenv("ROUTER_ML_TORCH_THREADS", "many")
    with pytest.raises(ValueError, match="ROUTER_ML_TORCH_THREADS"):
        torch_threads()
    with pytest.raises(ValueError, match=">= 1"):
        torch_threads(0)
