"""A faster embedder: the same sentence-transformers model run by ONNX Runtime.

The packaged MiniLM (or any local sentence-transformers folder with mean pooling) is exported once to ONNX from its
local weights with ``torch.onnx.export`` (the TorchScript exporter: needs only torch and onnx), optionally
quantised to int8 with ONNX Runtime's dynamic quantisation, and cached on disk under ``$ROUTER_ML_HOME/onnx/``
(or ``$ROUTER_ML_ONNX_DIR``), keyed by the source model, the truncation length, the precision and
:data:`RECIPE_VERSION`. Later constructions load the cached file; nothing is downloaded.

Inference tokenises with the fast HF tokenizer from the same folder (exactly the ids sentence-transformers feeds the
model), runs the texts sorted by token length in buckets so a batch pads little, then mean-pools over the attention
mask and L2-normalises as sentence-transformers does.

Precision: ``fp32`` keeps the embeddings within 1e-5 of sentence-transformers (cosine 1.00000 on real prompts).
``int8`` (dynamic, per-channel weights) is about 1.5x faster on AVX2 but does *not* keep 0.999 cosine to fp32 on
real prompts (minimum about 0.984), so only ``fp32`` is wired in as a backend; ``int8`` stays reachable here for
measurement (``benchmarks/embed_speed.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from router_ml import settings
from router_ml.atomic import atomic_write_with
from router_ml.embed import DEFAULT_BATCH_SIZE, EmbedderSpec, Matrix, default_model_path
from router_ml.errors import InvalidInput, MissingInput

# Bump when the export, the graph or the quantisation recipe changes: cached models of other versions are ignored.
RECIPE_VERSION = 1
Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_KEY_FILES = ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json")


def physical_cores() -> int:
    """Physical cores of this machine (distinct core ids in ``/proc/cpuinfo``), else ``os.cpu_count()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cores: set[tuple[str, str]] = set()
            phys = ""
            for line in fh:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    cores.add((phys, line.split(":", 1)[1].strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def onnx_threads(requested: int | None = None) -> int:
    """Intra-op threads for ONNX Runtime: ``requested``, else ``$ROUTER_ML_ONNX_THREADS``
    (:func:`router_ml.settings.onnx_threads`), else ``min(physical cores, 4)``.

    The threads do not spin while waiting for work (``session.intra_op.allow_spinning = 0``), so a second thread
    does not collapse when another process shares the CPU (measured by ``benchmarks/embed_speed.py --contend``).
    """
    if requested is None:
        return settings.onnx_threads() or min(physical_cores(), 4)
    if requested < 1:
        raise InvalidInput(f"onnx threads must be >= 1, got {requested}")
    return requested


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def model_fingerprint(path: Path) -> str:
    """Identity of a model folder: the bytes of its small config files and the size and mtime of its weights.

    Re-installing or replacing the weights changes it, so a stale ONNX file is never reused.
    """
    h = hashlib.sha256()
    for name in _KEY_FILES:
        f = path / name
        if f.exists():
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    for name in _WEIGHT_FILES:
        f = path / name
        if f.exists():
            st = f.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _check_mean_pooling(path: Path) -> None:
    """Refuse a sentence-transformers folder whose pooling is not mean pooling (the only one implemented here)."""
    modules = path / "modules.json"
    if not modules.exists():
        return
    with modules.open(encoding="utf-8") as fh:
        entries: list[dict[str, Any]] = json.load(fh)
    for entry in entries:
        if str(entry.get("type", "")).endswith("Pooling"):
            cfg = path / str(entry.get("path", "")) / "config.json"
            if cfg.exists() and not _read_json(cfg).get("pooling_mode_mean_tokens", False):
                raise InvalidInput(f"onnx embedder: {path} does not use mean pooling; use the torch backend")


def _model_max_len(path: Path) -> tuple[int, int]:
    """(sentence-transformers' truncation length, the model's position limit) of a folder."""
    limit = int(_read_json(path / "config.json").get("max_position_embeddings", 512))
    st_cfg = path / "sentence_bert_config.json"
    default = int(_read_json(st_cfg).get("max_seq_length", limit)) if st_cfg.exists() else limit
    return min(default, limit), limit


def export_onnx(model_dir: Path, out: Path) -> None:
    """Export the folder's transformer (hidden states, no pooling) to ONNX at ``out``; needs torch and onnx."""
    settings.offline_models()
    import warnings

    import torch
    import transformers
    from transformers import AutoModel

    transformers.utils.logging.disable_progress_bar()
    # Eager attention exports to the plain MatMul/Softmax pattern that ONNX Runtime's graph optimiser understands.
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager").eval()

    class Hidden(torch.nn.Module):  # type: ignore[misc]  # torch is read as Any
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.ones((2, 8), dtype=torch.long)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches, checked by the tests
        torch.onnx.export(
            Hidden(model),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def build_onnx(model_dir: Path, out: Path, precision: Precision) -> None:
    """Export ``model_dir`` and, for ``int8``, quantise it (dynamic, per-channel int8 weights); write ``out``."""
    with tempfile.TemporaryDirectory(prefix="router-ml-onnx-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(model_dir, fp32)
        if precision == "fp32":
            shutil.copyfile(fp32, out)
            return
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # the "pre-process" hint
        quantize_dynamic(fp32, out, weight_type=QuantType.QInt8, per_channel=True)


def cached_onnx_path(
    model_dir: Path, max_len: int, precision: Precision, home: Path | None = None, *, label: str | None = None
) -> Path:
    """Where the built model lives: ``$ROUTER_ML_HOME/onnx/<label>-<fingerprint>-<precision>@<max_len>-v<N>.onnx``,
    the fingerprint being :func:`model_fingerprint` of the source folder."""
    root = home / "onnx" if home is not None else settings.onnx_dir()
    stem = f"{label or model_dir.name}-{model_fingerprint(model_dir)}-{precision}@{max_len}-v{RECIPE_VERSION}"
    return root / f"{stem}.onnx"


def ensure_onnx(
    model_dir: Path, max_len: int, precision: Precision, home: Path | None = None, *, label: str | None = None
) -> Path:
    """The cached ONNX model for these settings, built the first time and written atomically (a crash or a
    concurrent builder never leaves a half-written file under the final name)."""
    path = cached_onnx_path(model_dir, max_len, precision, home, label=label)
    if not path.exists():

        def write(tmp: Path) -> None:
            build_onnx(model_dir, tmp, precision)
            tmp.chmod(0o644)

        atomic_write_with(path, write)
    return path


class OnnxEmbedder:
    """The packaged MiniLM (or a local sentence-transformers folder) on ONNX Runtime; an :class:`Embedder`.

    ``name`` is distinct from the torch embedder's (``all-MiniLM-L6-v2-onnx-fp32@256``), so cached vectors of the two
    never mix.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        precision: Precision = "fp32",
        max_len: int | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        home: Path | None = None,
        allow_spinning: bool = False,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").exists() or not (path / "tokenizer.json").exists():
            raise MissingInput(f"onnx embedder: {path} needs config.json and tokenizer.json (a fast tokenizer)")
        if precision not in PRECISIONS:
            raise InvalidInput(f"onnx embedder: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        _check_mean_pooling(path)
        default_len, limit = _model_max_len(path)
        if max_len is None:
            max_len = default_len
        if isinstance(max_len, bool) or not isinstance(max_len, int) or not 2 <= max_len <= limit:
            raise InvalidInput(
                f"onnx embedder: max_len must be an integer from 2 to {limit} (the model's max_position_embeddings),"
                f" got {max_len!r}"
            )
        if batch_size < 1:
            raise InvalidInput(f"onnx embedder: batch_size must be >= 1, got {batch_size}")
        self._spec = EmbedderSpec("onnx", None if model_path is None else str(model_path), max_len)
        base = self._spec.label
        self.model_path = path
        self.onnx_path = ensure_onnx(path, max_len, precision, home, label=base)
        self.max_len = max_len
        self.precision: Precision = precision
        self.threads = onnx_threads(threads)
        self._batch_size = batch_size

        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_len)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: a spinning thread burns a core another process needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        out_shape = self._session.get_outputs()[0].shape
        self._dim = int(out_shape[-1]) if isinstance(out_shape[-1], int) else int(self._probe_dim())
        self._name = self._spec.name if precision == "fp32" else f"{base}-onnx-{precision}@{max_len}"

    def _probe_dim(self) -> int:
        return int(self._run([self._tokenizer.encode("").ids]).shape[1])

    @property
    def spec(self) -> EmbedderSpec:
        """``onnx``, the model folder and the truncation length (an ``int8`` model is for measurement only and has
        no spec of its own)."""
        return self._spec

    @property
    def name(self) -> str:
        """Model, backend, precision and truncation length, e.g. ``all-MiniLM-L6-v2-onnx-fp32@256``."""
        return self._name

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM)."""
        return self._dim

    def _run(self, ids: Sequence[Sequence[int]]) -> Matrix:
        """Pad one bucket of token ids, run the model, mean-pool over the mask and L2-normalise."""
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        feeds: dict[str, npt.NDArray[np.int64]] = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        unit: Matrix = (pooled / norms).astype(np.float32)
        return unit

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (special tokens included)."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> Matrix:
        """Embed ``texts`` as unit-norm float32 rows, in order; batches are buckets of similar token length."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        encoded = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self._batch_size):
            bucket = order[start : start + self._batch_size]
            out[bucket] = self._run([encoded[i] for i in bucket])
        return out
