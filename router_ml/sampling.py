"""Drawing one action from a distribution: the one sampler the policy and the traffic simulator share."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def draw(probs: npt.NDArray[np.float64], u: float) -> int:
    """The index a uniform draw ``u`` in [0, 1) picks from ``probs`` (scaled to their sum, which float round-off
    keeps from being exactly 1; never an index of probability 0)."""
    choice = min(int(np.searchsorted(np.cumsum(probs), u * probs.sum(), side="right")), len(probs) - 1)
    while probs[choice] == 0:
        choice -= 1
    return choice
