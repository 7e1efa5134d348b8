"""Deterministic train/test splits of prompts by a hash of their id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput

TEST_FRACTION = 0.2
"""The share of prompts the protocol, the demo and ``router-ml split`` hold out."""


def hash_fraction(key: str, salt: str = "") -> float:
    """A stable number in [0, 1) for ``key``: the first 8 bytes of SHA-256(salt + key)."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_hash(
    ids: Sequence[str], test_fraction: float = TEST_FRACTION, salt: str = ""
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices of (train, test): a prompt is in test when its hash fraction is below ``test_fraction``."""
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInput(f"split: 'test_fraction' must lie in (0, 1), got {test_fraction}")
    is_test = np.array([hash_fraction(i, salt) < test_fraction for i in ids], dtype=bool)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)
