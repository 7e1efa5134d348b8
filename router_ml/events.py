"""Logged events as arrays: the one type every learner and estimator reads logged traffic as.

A row is one graded decision: the prompt, the models offered (``candidates``, and ``offered`` as a mask over the
catalog), the chosen model's catalog index (``actions``), its outcome (``quality``, ``cost_usd``) and the
probability it was chosen with (``propensities``). Built from a validated logs file (:meth:`LoggedEvents.from_logs`)
or from what an online run served on a full-information benchmark (:meth:`LoggedEvents.served`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from router_ml.catalog import Catalog
from router_ml.contracts import graded_only
from router_ml.errors import InvalidInput
from router_ml.fullinfo import FullInfo

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class LoggedEvents:
    """Graded logged events mapped onto a catalog (action ``j`` is ``models[j]``); ungraded rows are counted."""

    prompts: list[str]
    candidates: list[tuple[str, ...]]
    actions: Ints
    quality: Floats
    cost_usd: Floats
    propensities: Floats
    offered: Bools
    models: list[str]
    n_ungraded: int
    logging_policies: list[str] = field(default_factory=list)
    lams: Floats | None = None
    """The cost weight each event was served at, when the log knows it (:func:`router_ml.learn.learn_online`)."""

    @classmethod
    def from_logs(cls, logs: pl.DataFrame, catalog: Catalog) -> LoggedEvents:
        """Events from validated logs (:func:`router_ml.contracts.load_logs`); every model must be in ``catalog``."""
        split = graded_only(logs)
        graded = split.graded
        if graded.height < 2:
            raise InvalidInput(
                f"evaluate: need at least 2 graded events, got {graded.height} ({split.n_ungraded} ungraded skipped)"
            )
        catalog.require(graded["model"].unique().to_list(), "evaluate: logs 'model'")
        catalog.require(graded["candidates"].explode().unique().to_list(), "evaluate: logs 'candidates'")
        index = {m: j for j, m in enumerate(catalog.names)}
        candidates = [tuple(c) for c in graded["candidates"].to_list()]
        offered = np.zeros((graded.height, len(catalog)), dtype=np.bool_)
        for i, cands in enumerate(candidates):
            offered[i, [index[m] for m in cands]] = True
        return cls(
            prompts=graded["prompt"].to_list(),
            candidates=candidates,
            actions=np.array([index[m] for m in graded["model"].to_list()], dtype=np.int64),
            quality=graded["quality"].to_numpy().astype(np.float64),
            cost_usd=graded["cost_usd"].to_numpy().astype(np.float64),
            propensities=graded["propensity"].to_numpy().astype(np.float64),
            offered=offered,
            models=catalog.names,
            n_ungraded=split.n_ungraded,
            logging_policies=sorted(graded["policy_version"].unique().to_list()),
        )

    @classmethod
    def served(
        cls, table: FullInfo, rows: Ints, chosen: Ints, propensities: Floats, lams: Floats, policy_name: str
    ) -> LoggedEvents:
        """The events an online run served on a full-information ``table``: per event the prompt row, the chosen
        model index, its probability and the cost weight it was served at; the outcomes come from the table."""
        offered = table.offered[rows]
        return cls(
            prompts=[table.prompts[r] for r in rows],
            candidates=[tuple(m for m, ok in zip(table.models, mask) if ok) for mask in offered],
            actions=chosen,
            quality=table.quality[rows, chosen],
            cost_usd=table.cost[rows, chosen],
            propensities=propensities,
            offered=offered,
            models=list(table.models),
            n_ungraded=0,
            logging_policies=[policy_name],
            lams=lams,
        )

    @property
    def n(self) -> int:
        """Number of graded events."""
        return int(self.actions.shape[0])
