"""The direct-method reward model: a regressor ``r_hat(x, a)`` of one outcome for every (prompt, action) pair.

It sees what the policy can see (:meth:`router_ml.features.Featurizer.dense`): the raw embedding and
the one-hot k-means cluster ids of a fitted :class:`Featurizer`, usually the policy's own. Where VW
crosses those with the model id (``-q cm``), the network has one output per action on a small shared
hidden layer: the same per-model estimate, with
prompt difficulty learned once from every event instead of per model. The action features
(``m`` id, ``p`` log price) are implicit in the per-action outputs, since the evaluator scores a
fixed catalog.

**Loss.** With ``loss="auto"``, outcomes that are all 0 or 1 (quality graded right/wrong) get a
sigmoid output and binary cross-entropy; anything else (graded quality, cost, reward) gets squared
loss on standardised outcomes. ``loss="logistic"`` forces the former for fractional outcomes in
[0, 1], where cross-entropy's minimiser is still the conditional mean; it is a poor fit for tiny
values such as ``cost_usd``, where the sigmoid's gradient vanishes. Either way the prediction
estimates ``E[r | x, a]``.

**Weighting.** ``weighting="none"`` (default) fits every logged event with weight 1: consistent
for ``E[r | x, a]`` when the model can represent it, and the lowest variance.
``weighting="inverse_propensity"`` weights event ``i`` by ``1 / p_i`` (normalised to mean 1):
for each action it reweights the logged prompts back to the prompt distribution, which is what
DM's ``Σ_a pi(a|x) r_hat(x, a)`` averages over. That removes the bias a misspecified model picks up
from a *context-dependent* logging policy, at the cost of variance; under uniform or
context-free logging it only rebalances actions.

**Training.** Adam with weight decay, minibatches, early stopping on a validation split of
*distinct prompts* (so a repeated prompt never leaks from training into validation); the best
epoch's weights are kept. Torch runs on ``threads`` (default ``$ROUTER_ML_TORCH_THREADS`` or 1)
inside ``fit`` and ``predict`` only; the process-wide count is restored afterwards.

**Why an MLP and not VW**: more accurate and about ten times faster on the shared benchmark
(``docs/decisions/0005-reward-model.md``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput
from router_ml.features import Featurizer
from router_ml.torch_embed import torch_threads

if TYPE_CHECKING:  # torch is imported where a model is fitted, not by every process that imports the estimators
    import torch

Loss = Literal["auto", "logistic", "squared"]
Weighting = Literal["none", "inverse_propensity"]
Floats = npt.NDArray[np.float64]

_PREDICT_CHUNK = 8192
_PRIOR_EVENTS = 1.0  # pseudo-events of the overall mean in each action's starting output


@dataclass(frozen=True)
class RewardModelConfig:
    """Network and training settings (see the module docstring)."""

    hidden: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    validation_fraction: float = 0.1
    loss: Loss = "auto"
    weighting: Weighting = "none"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise InvalidInput(f"reward model: 'hidden' must be >= 0 (0 is a linear model), got {self.hidden}")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise InvalidInput("reward model: 'learning_rate' must be > 0 and 'weight_decay' >= 0")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise InvalidInput("reward model: 'batch_size', 'max_epochs' and 'patience' must be >= 1")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InvalidInput(
                f"reward model: 'validation_fraction' must lie in [0, 1), got"
                f" {self.validation_fraction}"
            )
        if self.loss not in ("auto", "logistic", "squared"):
            raise InvalidInput(f"reward model: 'loss' must be 'auto', 'logistic' or 'squared', got {self.loss!r}")
        if self.weighting not in ("none", "inverse_propensity"):
            raise InvalidInput(
                f"reward model: 'weighting' must be 'none' or 'inverse_propensity', got {self.weighting!r}"
            )


@dataclass(frozen=True)
class FitReport:
    """What a fit did: events used, epochs run, the epoch kept and its validation loss (NaN without validation)."""

    n_events: int
    n_validation: int
    epochs: int
    best_epoch: int
    validation_loss: float
    seconds: float


@contextmanager
def _threads(requested: int | None) -> Iterator[None]:
    """Run torch on ``torch_threads(requested)`` threads inside the block, then restore the previous count."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads(requested))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _network(d: int, k: int, hidden: int) -> torch.nn.Module:
    import torch
    if hidden == 0:
        return torch.nn.Linear(d, k)
    return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, k))


def _output_layer(net: torch.nn.Module) -> torch.nn.Linear:
    import torch
    layer = net if isinstance(net, torch.nn.Linear) else net[-1]
    assert isinstance(layer, torch.nn.Linear)
    return layer


class RewardModel:
    """A fitted ``r_hat(x, a)`` of one outcome over ``n_actions`` actions (catalog order); build with :meth:`fit`."""

    def __init__(
        self,
        featurizer: Featurizer,
        n_actions: int,
        config: RewardModelConfig,
        network: torch.nn.Module,
        *,
        logistic: bool,
        center: float,
        scale: float,
        report: FitReport,
    ) -> None:
        self.featurizer = featurizer
        self.n_actions = n_actions
        self.config = config
        self.report = report
        self.logistic = logistic
        self._net = network.eval()
        self._center = center
        self._scale = scale

    @classmethod
    def fit(
        cls,
        featurizer: Featurizer,
        embeddings: npt.NDArray[np.float32],
        actions: npt.NDArray[np.int64],
        outcomes: npt.ArrayLike,
        n_actions: int,
        *,
        propensities: npt.ArrayLike | None = None,
        config: RewardModelConfig | None = None,
    ) -> RewardModel:
        """Fit on logged events: ``embeddings`` (n, d), logged ``actions`` (n,) in [0, n_actions), ``outcomes`` (n,).

        ``propensities`` (n,) are needed only for ``weighting="inverse_propensity"``.
        """
        cfg = config or RewardModelConfig()
        t0 = time.perf_counter()
        x = featurizer.dense(embeddings)
        n = x.shape[0]
        a = np.asarray(actions)
        y = np.asarray(outcomes, dtype=np.float64)
        if n == 0:
            raise InvalidInput("reward model: need at least one logged event to fit")
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise InvalidInput(f"reward model: 'actions' must be {n} integer action indices, got {a.dtype} {a.shape}")
        if n_actions < 1 or a.min() < 0 or a.max() >= n_actions:
            raise InvalidInput(f"reward model: 'actions' must lie in [0, {n_actions}), got [{a.min()}, {a.max()}]")
        if y.shape != (n,) or not np.isfinite(y).all():
            raise InvalidInput(f"reward model: 'outcomes' must be {n} finite numbers, got shape {y.shape}")
        weights = _event_weights(cfg.weighting, propensities, n)
        logistic = cfg.loss == "logistic" or (cfg.loss == "auto" and bool(((y == 0) | (y == 1)).all()))
        if logistic and not ((y >= 0) & (y <= 1)).all():
            raise InvalidInput("reward model: loss 'logistic' needs 'outcomes' in [0, 1]")
        center, scale = (0.0, 1.0) if logistic else (float(y.mean()), float(y.std()) or 1.0)
        target = (y - center) / scale

        train, valid = _split_by_prompt(embeddings, cfg.validation_fraction, cfg.seed)
        import torch

        with _threads(cfg.threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = _network(x.shape[1], n_actions, cfg.hidden)
            _init_bias(_output_layer(net), a[train], target[train], weights[train], n_actions, logistic)
            epochs, best_epoch, best_loss = _train(net, x, a, target, weights, train, valid, cfg, logistic)
        report = FitReport(n, int(valid.size), epochs, best_epoch, best_loss, time.perf_counter() - t0)
        return cls(featurizer, n_actions, cfg, net, logistic=logistic, center=center, scale=scale, report=report)

    def predict(self, embeddings: npt.NDArray[np.float32]) -> Floats:
        """``r_hat(x, a)`` for every row of ``embeddings`` and every action: shape ``(n, n_actions)``."""
        x = self.featurizer.dense(embeddings)
        out = np.empty((x.shape[0], self.n_actions), dtype=np.float64)
        import torch

        with _threads(self.config.threads), torch.no_grad():
            for start in range(0, x.shape[0], _PREDICT_CHUNK):
                z = self._net(torch.from_numpy(x[start : start + _PREDICT_CHUNK]))
                z = torch.sigmoid(z) if self.logistic else z
                out[start : start + _PREDICT_CHUNK] = z.numpy().astype(np.float64)
        return out * self._scale + self._center


def cross_fit_predict(
    featurizer: Featurizer,
    embeddings: npt.NDArray[np.float32],
    actions: npt.NDArray[np.int64],
    outcomes: npt.ArrayLike,
    n_actions: int,
    *,
    propensities: npt.ArrayLike | None = None,
    folds: int = 2,
    config: RewardModelConfig | None = None,
) -> Floats:
    """Out-of-fold predictions ``(n, n_actions)``: each event is predicted by a model fitted on the other folds.

    This is the ``reward_hat`` to give :class:`router_ml.estimators.DoublyRobust`: a model fitted on
    the very events it corrects has residuals that are too small, and so is the DR interval.
    Events go to ``folds`` random folds (seeded by the config's seed); costs ``folds`` fits.
    """
    cfg = config or RewardModelConfig()
    n = embeddings.shape[0]
    if not 2 <= folds <= n:
        raise InvalidInput(f"reward model: 'folds' must lie in [2, {n}], got {folds}")
    y = np.asarray(outcomes, dtype=np.float64)
    a = np.asarray(actions)
    p = None if propensities is None else np.asarray(propensities, dtype=np.float64)
    fold = np.random.default_rng(cfg.seed).permutation(n) % folds
    out = np.empty((n, n_actions), dtype=np.float64)
    for f in range(folds):
        held, rest = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        model = RewardModel.fit(
            featurizer,
            embeddings[rest],
            a[rest],
            y[rest],
            n_actions,
            propensities=None if p is None else p[rest],
            config=cfg,
        )
        out[held] = model.predict(embeddings[held])
    return out


def _event_weights(weighting: Weighting, propensities: npt.ArrayLike | None, n: int) -> Floats:
    if weighting == "none":
        return np.ones(n, dtype=np.float64)
    if propensities is None:
        raise InvalidInput("reward model: weighting 'inverse_propensity' needs 'propensities'")
    p = np.asarray(propensities, dtype=np.float64)
    if p.shape != (n,) or not ((p > 0) & (p <= 1)).all():
        raise InvalidInput(f"reward model: 'propensities' must be {n} numbers in (0, 1]")
    w: Floats = 1.0 / p
    w /= w.mean()
    return w


def _split_by_prompt(
    embeddings: npt.NDArray[np.float32], fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train rows, validation rows): a seeded ``fraction`` of the distinct prompts goes to validation."""
    n = embeddings.shape[0]
    if fraction == 0.0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, group = np.unique(embeddings, axis=0, return_inverse=True)
    group = group.reshape(-1)
    n_groups = int(group.max()) + 1
    n_valid = round(n_groups * fraction)
    if n_valid < 1 or n_valid >= n_groups:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    held = np.zeros(n_groups, dtype=bool)
    held[np.random.default_rng(seed).permutation(n_groups)[:n_valid]] = True
    return np.flatnonzero(~held[group]).astype(np.int64), np.flatnonzero(held[group]).astype(np.int64)


def _init_bias(
    layer: torch.nn.Linear,
    actions: npt.NDArray[np.int64],
    target: Floats,
    weights: Floats,
    n_actions: int,
    logistic: bool,
) -> None:
    """Start each action's output at its (shrunk) mean outcome, so training spends its epochs on the prompts."""
    total = float(weights.sum())
    overall = float((weights * target).sum()) / total if total > 0 else 0.0
    sums = np.bincount(actions, weights=weights * target, minlength=n_actions)
    counts = np.bincount(actions, weights=weights, minlength=n_actions)
    means = (sums + _PRIOR_EVENTS * overall) / (counts + _PRIOR_EVENTS)
    if logistic:
        means = np.clip(means, 1e-3, 1 - 1e-3)
        means = np.log(means / (1 - means))
    import torch

    with torch.no_grad():
        layer.weight.mul_(0.1)
        layer.bias.copy_(torch.from_numpy(means.astype(np.float32)))


def _train(
    net: torch.nn.Module,
    x: npt.NDArray[np.float32],
    actions: npt.NDArray[np.int64],
    target: Floats,
    weights: Floats,
    train: npt.NDArray[np.int64],
    valid: npt.NDArray[np.int64],
    cfg: RewardModelConfig,
    logistic: bool,
) -> tuple[int, int, float]:
    """Minibatch training with early stopping; leaves the best epoch's weights in ``net``.

    Returns (epochs run, best epoch, its validation loss); without validation every epoch runs
    and the last is kept.
    """
    import torch

    xt = torch.from_numpy(x)
    at = torch.from_numpy(actions.astype(np.int64))
    yt = torch.from_numpy(target.astype(np.float32))
    wt = torch.from_numpy(weights.astype(np.float32))

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        z = net(xt[rows]).gather(1, at[rows, None])[:, 0]
        if logistic:
            per_event = torch.nn.functional.binary_cross_entropy_with_logits(z, yt[rows], reduction="none")
        else:
            per_event = (z - yt[rows]) ** 2
        w = wt[rows]
        return (per_event * w).sum() / w.sum()

    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_rows, valid_rows = torch.from_numpy(train), torch.from_numpy(valid)
    best_loss, best_epoch, best_state, stale = float("inf"), 0, None, 0
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        net.train()
        order = train_rows[torch.randperm(train_rows.numel(), generator=generator)]
        for start in range(0, order.numel(), cfg.batch_size):
            loss = loss_of(order[start : start + cfg.batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if valid_rows.numel() == 0:
            continue
        net.eval()
        with torch.no_grad():
            current = float(loss_of(valid_rows))
        if current < best_loss:
            best_loss, best_epoch, stale = current, epoch, 0
            best_state = {name: t.detach().clone() for name, t in net.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is None:
        return epoch, epoch, float("nan")
    net.load_state_dict(best_state)
    return epoch, best_epoch, best_loss
