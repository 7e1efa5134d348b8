"""Reference routers for the benchmark protocol. All but the single models see full information.

Each returns, for a given ``lam``, one model index per TEST prompt (columns of the :class:`FullInfo`):

* :func:`per_category`: per benchmark category, the model with the best mean reward on TRAIN (the only
  router allowed to read ``category``; a benchmark without categories gets one global choice).
* :class:`KnnRouter`: the mean quality and cost of each model over the ``k`` nearest TRAIN prompts
  in embedding space (cosine), then the best estimated reward.
* :func:`oracle`: the best reward per prompt in hindsight, an upper bound no router can reach.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput
from router_ml.fullinfo import FullInfo
from router_ml.reward import reward

Choices = npt.NDArray[np.int64]
Matrix = npt.NDArray[np.float64]


def _best(quality: Matrix, cost: Matrix, lam: float) -> Choices:
    return np.asarray(np.nan_to_num(reward(quality, cost, lam), nan=-np.inf).argmax(axis=1), dtype=np.int64)


def oracle(test: FullInfo, lam: float) -> Choices:
    """The hindsight-best model per prompt."""
    return _best(test.quality, test.cost, lam)


def per_category(train: FullInfo, test: FullInfo, lam: float) -> Choices:
    """The best model per category on TRAIN, applied to TEST (unseen categories get the global best)."""
    global_best = int(_best(np.nanmean(train.quality, axis=0)[None], np.nanmean(train.cost, axis=0)[None], lam)[0])
    cats = np.array([c if c is not None else "" for c in train.categories])
    table: dict[str, int] = {}
    for cat in np.unique(cats):
        rows = cats == cat
        q = np.nanmean(train.quality[rows], axis=0)[None]
        c = np.nanmean(train.cost[rows], axis=0)[None]
        table[str(cat)] = int(_best(q, c, lam)[0])
    return np.array([table.get(c if c is not None else "", global_best) for c in test.categories], dtype=np.int64)


class KnnRouter:
    """k nearest TRAIN prompts by cosine similarity of unit-norm embeddings; estimates are neighbour means."""

    def __init__(
        self,
        train: FullInfo,
        train_emb: npt.NDArray[np.float32],
        test_emb: npt.NDArray[np.float32],
        k: int = 20,
        block: int = 1024,
    ) -> None:
        if k < 1:
            raise InvalidInput(f"knn: 'k' must be >= 1, got {k}")
        k = min(k, train_emb.shape[0])
        self.quality = np.empty((test_emb.shape[0], train.quality.shape[1]))
        self.cost = np.empty_like(self.quality)
        for start in range(0, test_emb.shape[0], block):
            sims = test_emb[start : start + block] @ train_emb.T
            nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            self.quality[start : start + block] = np.nanmean(train.quality[nn], axis=1)
            self.cost[start : start + block] = np.nanmean(train.cost[nn], axis=1)

    def choose(self, lam: float) -> Choices:
        """Best estimated reward per TEST prompt."""
        return _best(self.quality, self.cost, lam)
