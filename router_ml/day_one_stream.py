"""A day-one stream on a benchmark: the learning curve of a :mod:`router_ml.day_one` policy, graded by the benchmark.

:func:`run_stream` serves a seeded stream of prompts drawn from a TRAIN table the way the service does
(:meth:`Policy.distribution`, :meth:`Policy.sample`, then :meth:`Policy.learn_context` with the graded outcome, the
cost model left to metering as in the service), and at checkpoints replays the policy as it serves (its prior and
exploration included) exactly on a TEST table: quality and cost against always-the-default and the single-model
hull at the same cost, and the exploration spend so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from router_ml.cost_model import estimate_tokens
from router_ml.errors import InvalidInput
from router_ml.frontier import hull_quality
from router_ml.fullinfo import FullInfo
from router_ml.policy import Policy


@dataclass(frozen=True)
class Checkpoint:
    """The policy after ``graded`` graded requests, replayed on TEST (costs in USD per 1,000 requests)."""

    graded: int
    quality: float
    cost_per_1k: float
    default_quality: float
    default_cost_per_1k: float
    hull_quality: float
    trusted: bool
    explored_share: float
    explore_spend_per_1k: float
    stream_cost_per_1k: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay(policy: Policy, table: FullInfo, embeddings: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The policy's expected quality and cost per 1,000 requests on every prompt of ``table``, as it serves."""
    if table.models != policy.catalog.names:
        raise InvalidInput("day one: the table's models must be the policy's catalog, in order")
    tokens = [estimate_tokens(p) for p in table.prompts]
    probs = policy.predict_many(embeddings, prompt_tokens=tokens)
    quality = float(np.nanmean(np.nansum(probs * table.quality, axis=1)))
    cost = float(np.nanmean(np.nansum(probs * table.cost, axis=1))) * 1000.0
    return quality, cost


def run_stream(
    policy: Policy,
    train: FullInfo,
    train_embeddings: npt.NDArray[np.float32],
    test: FullInfo,
    test_embeddings: npt.NDArray[np.float32],
    checkpoints: Sequence[int],
    *,
    seed: int = 0,
) -> list[Checkpoint]:
    """Serve ``max(checkpoints)`` requests drawn uniformly from ``train``, learning from each grade; replay on
    ``test`` at 0 and at every checkpoint. ``policy`` learns in place."""
    if policy.prior is None:
        raise InvalidInput("day one: the policy has no day-one prior (register it with router-ml init)")
    d = policy.catalog.index(policy.prior.default)
    singles = [(float(np.nanmean(test.cost[:, j])) * 1000.0, float(np.nanmean(test.quality[:, j]))) for j in
               range(len(test.models))]
    contexts = policy.featurizer.shared(train_embeddings)
    tokens = [estimate_tokens(p) for p in train.prompts]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(train.prompts), size=max(checkpoints, default=0))
    names = policy.catalog.names
    spent = 0.0
    out: list[Checkpoint] = []

    def mark(graded: int) -> None:
        q, c = replay(policy, test, test_embeddings)
        prior = policy.prior
        assert prior is not None
        report = prior.report()
        out.append(
            Checkpoint(
                graded=graded,
                quality=q,
                cost_per_1k=c,
                default_quality=singles[d][1],
                default_cost_per_1k=singles[d][0],
                hull_quality=hull_quality(singles, c),
                trusted=prior.trusted,
                explored_share=float(report["explored_share"]),
                explore_spend_per_1k=float(report["explore_spend_per_1k"]),
                stream_cost_per_1k=spent / max(graded, 1) * 1000.0,
            )
        )

    wanted = set(checkpoints)
    mark(0)
    for i, r in enumerate(rows, start=1):
        r = int(r)
        offered = train.offered[r]
        cands = None if offered.all() else [m for m, ok in zip(names, offered) if ok]
        decision = policy.decide(contexts[r], rng, cands, prompt_tokens=tokens[r])
        j = policy.catalog.index(decision.model)
        cost = float(train.cost[r, j])
        policy.learn(
            contexts[r],
            decision.model,
            float(train.quality[r, j]),
            cost,
            decision.probability,
            cands,
            prompt_tokens=tokens[r],
            observe_cost=False,
        )
        spent += cost
        if i in wanted:
            mark(i)
    return out


FRONTIER = ("gpt-4o", "gemini-1.5-pro", "llama-3.1-70b-instruct", "gemini-1.5-flash")
"""Four models of the shared MMLU-Pro benchmark for a day-one catalog: priced from $0.075/$0.30 to $5/$15."""


@dataclass(frozen=True)
class Split:
    """A benchmark's TRAIN and TEST tables over a catalog, with their prompts' embeddings."""

    train: FullInfo
    train_embeddings: npt.NDArray[np.float32]
    test: FullInfo
    test_embeddings: npt.NDArray[np.float32]


def split_tables(table: FullInfo, embed: Any, max_prompts: int | None = None) -> Split:
    """TRAIN and TEST by the project's hash split of ``prompt_id`` (the first ``max_prompts`` of each, if given),
    embedded with ``embed`` (a function from prompts to a matrix)."""
    from router_ml.split import split_by_hash

    train_rows, test_rows = split_by_hash(table.prompt_ids)
    if max_prompts is not None:
        train_rows, test_rows = train_rows[:max_prompts], test_rows[: max(max_prompts // 4, 1)]
    train, test = table.subset(train_rows), table.subset(test_rows)
    return Split(
        train,
        np.asarray(embed(train.prompts), dtype=np.float32),
        test,
        np.asarray(embed(test.prompts), dtype=np.float32),
    )
