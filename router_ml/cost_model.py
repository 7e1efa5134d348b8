"""What each model is expected to cost on a prompt: catalog prices times the prompt's tokens and the model's
expected completion length.

The policy learns *quality*; cost is priced here and traded at decision time (``quality - lam * cost_per_1k``),
so one learned model serves every ``lam``. A call's cost is ``(input_tokens * input_price + output_tokens *
output_price) / 1e6``; the prompt's tokens are known before the call (:func:`estimate_tokens`), the completion's
are not. Each model's expected completion length is the mean of what was observed for it, shrunk towards the mean
over all models by one pseudo-observation, so a model not yet seen is priced like the others are used; before any
observation every model gets :data:`DEFAULT_OUTPUT_TOKENS`.

Observations come either as metered completion lengths (the service reads the upstream's usage) or as a logged
call's cost, from which the completion length is recovered: ``(cost * 1e6 - input_tokens * input_price) /
output_price``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from router_ml.catalog import Catalog
from router_ml.errors import InvalidInput

Floats = npt.NDArray[np.float64]

CHARS_PER_TOKEN = 4.0
"""Token estimate for text before a provider has counted it (the benchmarks' own convention)."""

DEFAULT_OUTPUT_TOKENS = 256.0
"""Expected completion length before any usage has been observed."""


def estimate_tokens(text: str) -> int:
    """``ceil(len(text) / 4)``, at least 1."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@dataclass
class CostModel:
    """Per model (catalog order): list prices and the observed completion lengths."""

    input_usd_per_mtok: Floats
    output_usd_per_mtok: Floats
    output_sums: Floats
    output_counts: Floats
    names: list[str] = field(default_factory=list)

    @classmethod
    def for_catalog(cls, catalog: Catalog) -> CostModel:
        """A cost model with nothing observed yet."""
        k = len(catalog)
        return cls(
            input_usd_per_mtok=np.array([m.input_usd_per_mtok for m in catalog.models], dtype=np.float64),
            output_usd_per_mtok=np.array([m.output_usd_per_mtok for m in catalog.models], dtype=np.float64),
            output_sums=np.zeros(k),
            output_counts=np.zeros(k),
            names=list(catalog.names),
        )

    def observe_output_tokens(self, model: int, output_tokens: float) -> None:
        """Count one metered completion length of catalog model ``model``."""
        if not (math.isfinite(output_tokens) and output_tokens >= 0):
            raise InvalidInput(f"costs: 'output_tokens' must be a finite number >= 0, got {output_tokens}")
        self.output_sums[model] += output_tokens
        self.output_counts[model] += 1

    def observe_cost(self, model: int, input_tokens: float, cost_usd: float) -> None:
        """Count one call's completion length, recovered from its cost (skipped for a model with free output)."""
        price = self.output_usd_per_mtok[model]
        if price > 0:
            out = (cost_usd * 1e6 - input_tokens * self.input_usd_per_mtok[model]) / price
            self.observe_output_tokens(model, max(0.0, out))

    def expected_output_tokens(self) -> Floats:
        """Each model's expected completion length (see the module docstring)."""
        total = self.output_counts.sum()
        pooled = self.output_sums.sum() / total if total else DEFAULT_OUTPUT_TOKENS
        return np.asarray((self.output_sums + pooled) / (self.output_counts + 1.0), dtype=np.float64)

    def per_1k(self, input_tokens: npt.ArrayLike) -> Floats:
        """Expected cost in USD per 1,000 such requests: shape ``(k,)`` for one prompt length, ``(n, k)`` for
        ``n`` of them."""
        tokens = np.asarray(input_tokens, dtype=np.float64)
        out = self.expected_output_tokens()
        cost = (tokens[..., None] * self.input_usd_per_mtok + out * self.output_usd_per_mtok) / 1e3
        return np.asarray(cost, dtype=np.float64)

    def with_catalog(self, catalog: Catalog) -> CostModel:
        """The same observations over another catalog: models it keeps keep theirs, new ones start empty."""
        grown = CostModel.for_catalog(catalog)
        for j, name in enumerate(catalog.names):
            if name in self.names:
                i = self.names.index(name)
                grown.output_sums[j], grown.output_counts[j] = self.output_sums[i], self.output_counts[i]
        return grown

    def to_json(self) -> str:
        """The observations as JSON (prices come from the catalog)."""
        return json.dumps(
            {"models": self.names, "output_sums": self.output_sums.tolist(), "counts": self.output_counts.tolist()}
        )

    @classmethod
    def from_json(cls, text: str, catalog: Catalog) -> CostModel:
        """Inverse of :meth:`to_json` over ``catalog``."""
        raw: dict[str, Any] = json.loads(text)
        saved = CostModel.for_catalog(catalog)
        saved.names = list(raw["models"])
        saved.output_sums = np.asarray(raw["output_sums"], dtype=np.float64)
        saved.output_counts = np.asarray(raw["counts"], dtype=np.float64)
        return saved.with_catalog(catalog)
