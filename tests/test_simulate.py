"""Simulated logged traffic: valid under the contract, seeded, with the true propensities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_ml.contracts import load_benchmark, validate_logs
from router_ml.fullinfo import FullInfo
from router_ml.simulate import EpsilonGreedy, Uniform, simulate


@pytest.fixture(scope="module")
def table(small_benchmark: Path) -> FullInfo:
    return FullInfo.from_benchmark(load_benchmark(small_benchmark))


def test_uniform_logs_follow_the_contract_and_the_truth(table: FullInfo) -> None:
    logs = validate_logs(simulate(table, 3000, seed=1))
    assert logs.height == 3000
    assert np.allclose(logs["propensity"].to_numpy(), 1 / 31)
    # each logged outcome is the benchmark's outcome for that (prompt, model)
    pid = {p: i for i, p in enumerate(table.prompt_ids)}
    for row in logs.head(200).iter_rows(named=True):
        i, j = pid[row["prompt_id"]], table.models.index(row["model"])
        assert row["quality"] == table.quality[i, j]
        assert row["cost_usd"] == table.cost[i, j]
    counts = logs["model"].value_counts()["count"].to_numpy()
    assert counts.min() > 3000 / 31 * 0.5


def test_seeded_and_different_across_seeds(table: FullInfo) -> None:
    a, b, c = simulate(table, 200, seed=7), simulate(table, 200, seed=7), simulate(table, 200, seed=8)
    assert a.equals(b)
    assert not a.equals(c)


def test_epsilon_greedy_propensities_are_exact(table: FullInfo) -> None:
    logging = EpsilonGreedy("gpt-4o", epsilon=0.2)
    logs = simulate(table, 4000, seed=2, logging=logging)
    top = logs.filter(logs["model"] == "gpt-4o")
    assert np.allclose(top["propensity"].to_numpy(), 0.8 + 0.2 / 31)
    assert np.allclose(logs.filter(logs["model"] != "gpt-4o")["propensity"].to_numpy(), 0.2 / 31)
    assert abs(top.height / 4000 - (0.8 + 0.2 / 31)) < 0.03
    assert set(logs["policy_version"].to_list()) == {"epsilon-greedy:gpt-4o:0.2"}


def test_missing_pairs_are_not_offered(table: FullInfo) -> None:
    q = table.quality.copy()
    q[:, table.models.index("gpt-4o")] = np.nan
    partial = FullInfo(table.prompt_ids, table.prompts, table.categories, table.models, q, table.cost)
    logs = validate_logs(simulate(partial, 500, seed=0, logging=Uniform()))
    assert "gpt-4o" not in logs["model"].to_list()
    assert np.allclose(logs["propensity"].to_numpy(), 1 / 30)
    assert all(len(c) == 30 for c in logs["candidates"].to_list())


def test_bad_arguments(table: FullInfo) -> None:
    with pytest.raises(ValueError, match="'events'"):
        simulate(table, 0)
    with pytest.raises(ValueError, match="'epsilon'"):
        EpsilonGreedy("gpt-4o", epsilon=0.0)
    with pytest.raises(ValueError, match="not in the benchmark"):
        simulate(table, 10, logging=EpsilonGreedy("no-such-model"))
