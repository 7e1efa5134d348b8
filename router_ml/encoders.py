"""From an :class:`~router_ml.embed.EmbedderSpec` to a running encoder: the one place that knows the backends.

:func:`build_embedder` builds the encoder a spec names (ONNX Runtime or sentence-transformers on torch), optionally
behind the on-disk cache; :class:`Embedders` builds each spec's once, with one set of threads and batch size, for
jobs that embed for several policies (evaluation, promotion, the notebooks).
"""

from __future__ import annotations

from pathlib import Path

from router_ml.embed import DEFAULT_BATCH_SIZE, CachedEmbedder, Embedder, EmbedderSpec, EmbeddingCache, VectorStore
from router_ml.errors import InvalidInput


def build_embedder(
    spec: EmbedderSpec,
    *,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache: VectorStore | None = None,
) -> Embedder:
    """The encoder ``spec`` names, behind ``cache`` if given. ``threads`` are torch threads for ``torch`` and ONNX
    Runtime intra-op threads for ``onnx``. A resolved spec must rebuild the very encoder it names (the same model
    and truncation), or the vectors would not be the ones a policy learned on."""
    inner: Embedder
    if spec.backend == "torch":
        from router_ml.torch_embed import SentenceTransformerEmbedder

        inner = SentenceTransformerEmbedder(
            spec.model_path, threads=threads, batch_size=batch_size, max_seq_length=spec.max_len
        )
    else:
        from router_ml.onnx_embed import OnnxEmbedder

        inner = OnnxEmbedder(spec.model_path, threads=threads, batch_size=batch_size, max_len=spec.max_len)
    if spec.max_len is not None and inner.name != spec.name:
        raise InvalidInput(f"embedder: the spec names '{spec.name}' but '{inner.name}' was loaded")
    return CachedEmbedder(inner, cache) if cache is not None else inner


class Embedders:
    """Builds the encoder of each spec once, with these threads and batch size, behind the cache at ``cache_path``
    (None: no cache)."""

    def __init__(
        self, *, threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, cache_path: Path | None = None
    ) -> None:
        self.threads, self.batch_size = threads, batch_size
        self._cache = EmbeddingCache(cache_path) if cache_path is not None else None
        self._built: dict[EmbedderSpec, Embedder] = {}

    def get(self, spec: EmbedderSpec) -> Embedder:
        """The encoder ``spec`` names (built on first use)."""
        if spec not in self._built:
            self._built[spec] = build_embedder(
                spec, threads=self.threads, batch_size=self.batch_size, cache=self._cache
            )
        return self._built[spec]
