"""The torch backend: a local sentence-transformers model, loaded offline, batched, with an optional progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_ml import settings
from router_ml.embed import DEFAULT_BATCH_SIZE, EmbedderSpec, Matrix, default_model_path
from router_ml.errors import InvalidInput, MissingInput


def torch_threads(requested: int | None = None) -> int:
    """Threads for torch: ``requested``, else ``$ROUTER_ML_TORCH_THREADS`` (see :mod:`router_ml.settings`)."""
    if requested is None:
        return settings.torch_threads()
    if requested < 1:
        raise InvalidInput(f"torch threads must be >= 1, got {requested}")
    return requested


class SentenceTransformerEmbedder:
    """A local sentence-transformers model (default: the packaged MiniLM); an :class:`~router_ml.embed.Embedder`."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_seq_length: int | None = None,
    ) -> None:
        settings.offline_models()
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()

        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise MissingInput(f"embedder: {path} is not a sentence-transformers model directory")
        torch.set_num_threads(torch_threads(threads))
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        if max_seq_length is not None:
            self._model.max_seq_length = max_seq_length
        self._batch_size = batch_size
        max_len = self._model.max_seq_length
        if max_len is None:
            raise InvalidInput(f"embedder: {path} does not report a truncation length; give one")
        self._spec = EmbedderSpec("torch", None if model_path is None else str(model_path), int(max_len))
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise InvalidInput(f"embedder: {path} does not report an embedding dimension")
        self._dim = int(dim)

    @property
    def spec(self) -> EmbedderSpec:
        """``torch``, the model folder and the truncation length."""
        return self._spec

    @property
    def name(self) -> str:
        """Model name plus truncation length, e.g. ``all-MiniLM-L6-v2@256``."""
        return self._spec.name

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
