"""The reward a router maximises, in one place: ``quality - lam * cost_per_1k``.

``quality`` is a grade on the 0-1 scale; ``cost_per_1k`` is the call's cost in USD per 1,000 such requests
(``1000 * cost_usd``). So ``lam`` reads as *how much quality you would give up to save one dollar per thousand
requests*: with ``lam = 0.05``, paying $2 more per 1,000 requests must buy at least 0.1 more quality.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import numpy.typing as npt

PER_1K = 1000.0
"""Requests per unit of ``cost_per_1k``: a cost in USD per request times this is USD per 1,000 requests."""

Floats = npt.NDArray[np.float64]


@overload
def reward(quality: float, cost_usd: float, lam: float) -> float: ...


@overload
def reward(quality: Floats, cost_usd: Floats, lam: float) -> Floats: ...


def reward(quality: float | Floats, cost_usd: float | Floats, lam: float) -> float | Floats:
    """``quality - lam * 1000 * cost_usd``, element-wise for arrays."""
    return quality - lam * PER_1K * cost_usd
