"""Counterfactual evaluation and gated promotion on real components: MiniLM, VW, a temp MLflow store, Parquet logs.

The world: 120 benchmark prompts x 31 models, uniformly logged traffic simulated from them (so the
exact truth is known), a policy trained on 2,000 events (lam 0.05) and a "uniform" policy (epsilon
greedy with epsilon 1, i.e. it serves every model with equal probability). Under lam 0.05 the
trained policy's reward is about 0.68 and the uniform one's about 0.29, with DR intervals of about
+-0.1 and +-0.02: the gate's verdicts below sit far from its threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest

from router_ml import settings
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.cli import main
from router_ml.contracts import load_benchmark, load_logs
from router_ml.cost_model import estimate_tokens
from router_ml.embed import CachedEmbedder
from router_ml.estimators import IPS, SNIPS, BanditFeedback, DoublyRobust, paired_difference
from router_ml.evaluation import evaluate_policy, gate, target_distribution
from router_ml.events import LoggedEvents
from router_ml.features import FeatureConfig
from router_ml.fullinfo import FullInfo
from router_ml.learn import file_fingerprint, train_policy
from router_ml.policy import Policy, PolicyConfig
from router_ml.registry import PolicyRegistry
from router_ml.replay import replay_distribution
from router_ml.simulate import simulate
from tests.servekit import sqlite_store

N_TRAIN = 2000
N_EVAL = 2000
N_UNGRADED = 25
LAM = 0.05
FEATURES = FeatureConfig(clusters=(4, 8))
Z95 = 1.959963984540054


@dataclass(frozen=True)
class World:
    table: FullInfo
    logs: Path
    good: Path
    uniform: Path
    good_policy: Policy
    uniform_policy: Policy


@pytest.fixture(scope="module")
def world(small_benchmark: Path, embedder: CachedEmbedder, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("evaluate")
    bench = load_benchmark(small_benchmark)
    catalog = Catalog.from_benchmark(bench)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    train = simulate(table, N_TRAIN, seed=1)
    good, _ = train_policy(train, embedder, catalog, PolicyConfig(lam=LAM), FEATURES, progress=False)
    everything = PolicyConfig(lam=LAM, exploration="epsilon", epsilon=1.0)
    uniform, _ = train_policy(train.head(200), embedder, catalog, everything, FEATURES, progress=False)
    logs = simulate(table, N_EVAL, seed=2)
    ungraded = pl.int_range(pl.len()) < N_UNGRADED
    logs = logs.with_columns(pl.when(ungraded).then(None).otherwise(pl.col("quality")).alias("quality"))
    logs.write_parquet(root / "logs.parquet")
    PolicyArtifact(good, embedder=embedder.spec).save(root / "good")
    PolicyArtifact(uniform, embedder=embedder.spec).save(root / "uniform")
    return World(table, root / "logs.parquet", root / "good", root / "uniform", good, uniform)


def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line (MLflow may print warnings before it)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def register(folder: Path) -> str:
    artifact = PolicyArtifact.load(folder)
    registry = PolicyRegistry(sqlite_store(settings.home()))  # the store `router-ml` uses in the test's home
    return registry.log_version(artifact, params={"lam": artifact.policy.config.lam}, metrics={}).version


def test_paired_difference_by_hand() -> None:
    def feedback(target: list[list[float]]) -> BanditFeedback:
        return BanditFeedback(
            actions=np.array([0, 1, 0, 1]),
            rewards=np.array([1.0, 0.0, 0.0, 1.0]),
            propensities=np.full(4, 0.5),
            target=np.array(target),
            reward_hat=np.array([[0.5, 0.2], [0.6, 0.1], [0.3, 0.9], [0.4, 0.8]]),
        )

    mixed = feedback([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    second = feedback([[0.0, 1.0]] * 4)
    # IPS terms: [2, 0, 0, 2] and [0, 0, 0, 2]; differences [2, 0, 0, 0]: mean 0.5, sd 1
    diff = paired_difference(IPS(), mixed, second)
    assert diff.value == pytest.approx(0.5)
    assert (diff.low, diff.high) == pytest.approx((0.5 - Z95 * 0.5, 0.5 + Z95 * 0.5))
    assert diff.value == pytest.approx(IPS().estimate(mixed).value - IPS().estimate(second).value)
    for est in (IPS(), SNIPS(), DoublyRobust()):
        same = paired_difference(est, mixed, mixed)
        assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0), "a target against itself differs by exactly 0"
    with pytest.raises(ValueError, match="same logged events"):
        paired_difference(IPS(), mixed, mixed.take(np.array([0, 1, 2])))


def test_estimates_agree_with_exact_replay(world: World, embedder: CachedEmbedder) -> None:
    table = world.table
    events = LoggedEvents.from_logs(load_logs(world.logs), world.good_policy.catalog)
    assert (events.n, events.n_ungraded) == (N_EVAL - N_UNGRADED, N_UNGRADED)
    x = embedder.encode(events.prompts)
    good = evaluate_policy(world.good_policy, events, x)
    # every single model: the truth is its mean over the benchmark's prompts (the logs draw them uniformly)
    truth = np.nanmean(table.quality, axis=0)
    for key in ("dr", "snips"):
        covered = np.mean([s.quality[key].contains(truth[table.models.index(str(s.model))]) for s in good.singles])
        assert covered >= 0.8, (key, covered)
    # the policy as it serves, against exact replay of its distribution on every prompt
    everywhere = target_distribution(
        world.good_policy,
        embedder.encode(table.prompts),
        [table.models] * len(table.prompts),
        [estimate_tokens(p) for p in table.prompts],
    )
    exact = replay_distribution(table, everywhere, "policy")
    dr = good.policy.quality["dr"]
    assert abs(dr.value - exact.quality) <= 1.5 * dr.half_width, (dr, exact)
    # uniform target under uniform logging: every weight is 1, so IPS is the on-policy mean
    uniform = evaluate_policy(world.uniform_policy, events, x)
    assert uniform.policy.ess == pytest.approx(events.n)
    assert uniform.policy.quality["ips"].value == pytest.approx(uniform.logging.quality["on_policy"].value)
    # the gate: clearly better passes; clearly worse and a tie do not
    assert gate(good, uniform).passed
    assert not gate(uniform, good).passed
    assert not gate(good, good).passed


def test_evaluate_command_end_to_end(
    home: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = register(world.good)
    assert main(["promote", version]) == 0, "no champion yet: promoted without a comparison"
    out = tmp_path / "report.json"
    args = ["evaluate", "--policy", "models:/router-ml@champion", "--logs", str(world.logs), "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "policy (exploring)" in printed and "always-best model" in printed and "per 1k requests" in printed

    report = json.loads(out.read_text())
    assert report["policy"]["version"] == version
    assert (report["n_events"], report["n_ungraded"]) == (N_EVAL - N_UNGRADED, N_UNGRADED)
    assert report["logs"]["sha256"] == file_fingerprint(world.logs)
    assert report["lam"] == LAM
    targets = report["targets"]
    assert set(targets) == {"policy", "policy_greedy", "logging", "best_single"}
    for key in ("policy", "policy_greedy", "best_single"):
        t = targets[key]
        for outcome in ("quality", "cost_usd", "cost_usd_per_1k", "reward"):
            assert set(t[outcome]) == {"ips", "snips", "dm", "dr"}
            assert t[outcome]["dr"]["low"] <= t[outcome]["dr"]["value"] <= t[outcome]["dr"]["high"]
        dr = {o: t[o]["dr"]["value"] for o in ("quality", "cost_usd", "cost_usd_per_1k", "reward")}
        assert dr["cost_usd_per_1k"] == pytest.approx(1000 * dr["cost_usd"])
        assert dr["reward"] == pytest.approx(dr["quality"] - LAM * 1000 * dr["cost_usd"])
    graded = load_logs(world.logs).drop_nulls("quality")
    assert targets["logging"]["quality"]["on_policy"]["value"] == pytest.approx(graded["quality"].mean())
    assert [s["model"] for s in report["singles"]] == world.table.models
    best = max(report["singles"], key=lambda s: s["quality"]["dr"]["value"])
    assert report["best_model"] == best["model"] == targets["best_single"]["model"]

    savings = report["savings"]["policy"]
    assert savings["baseline"] == report["best_model"]
    for key in ("dr", "snips"):
        saved = savings["cost_saved_usd"][key]
        assert saved["low"] <= saved["value"] <= saved["high"]
    # every event offered every model, so the paired difference's value is the difference of the two estimates
    assert savings["cost_saved_usd"]["dr"]["value"] == pytest.approx(
        best["cost_usd"]["dr"]["value"] - targets["policy"]["cost_usd"]["dr"]["value"]
    )
    assert savings["quality_at_least_equal"] == (savings["quality_diff"]["dr"]["low"] >= 0)
    assert savings["verdict"] and report["savings"]["policy_greedy"]["verdict"]

    registry = PolicyRegistry()
    run = mlflow.MlflowClient(registry.tracking_uri).get_run(registry.resolve(version).run_id)
    logged = run.data.metrics
    assert logged["eval_dr_reward"] == pytest.approx(targets["policy"]["reward"]["dr"]["value"])
    assert logged["eval_dr_reward_low"] == pytest.approx(targets["policy"]["reward"]["dr"]["low"])
    assert logged["eval_cost_saved_vs_best"] == pytest.approx(savings["cost_saved_usd"]["dr"]["value"])
    for key in ("eval_dr_reward_high", "eval_dr_quality", "eval_dr_cost_usd", "eval_n_events", "eval_ess"):
        assert key in logged
    assert logged["eval_n_events"] == N_EVAL - N_UNGRADED
    assert run.data.tags["eval_data_sha256"] == report["logs"]["sha256"]

    # a policy folder is evaluated too, and logs nothing anywhere
    assert main(["evaluate", "--policy", str(world.uniform), "--logs", str(world.logs)]) == 0
    assert f"policy file:{world.uniform}" in capsys.readouterr().out


def test_promotion_is_gated(home: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uniform, good, same = register(world.uniform), register(world.good), register(world.good)
    registry = PolicyRegistry()
    logs = str(world.logs)

    def champion() -> str:
        return registry.resolve("champion").version

    assert main(["promote", uniform]) == 0
    assert registry.resolve("champion").tags["promotion_gate"] == "no-previous"

    # a champion exists: no comparison, no promotion
    assert main(["promote", good]) == 2
    err = last_error(capsys)
    assert err.startswith("error: ") and "--logs" in err
    bad = tmp_path / "bad.parquet"
    pl.read_parquet(world.logs).drop("propensity").write_parquet(bad)
    assert main(["promote", good, "--logs", str(bad)]) == 2
    assert "'propensity' is missing" in last_error(capsys)
    assert champion() == uniform

    # clearly better on the same logs: promoted, with the figures on the version
    assert main(["promote", good, "--logs", logs]) == 0
    assert "gate passed" in capsys.readouterr().out
    tags = registry.resolve("champion").tags
    assert champion() == good
    assert (tags["promotion_gate"], tags["promotion_forced"], tags["promotion_previous"]) == (
        "passed",
        "false",
        uniform,
    )
    assert float(tags["promotion_dr_reward_low"]) > float(tags["promotion_previous_dr_reward"])
    assert tags["promotion_logs_sha256"] == file_fingerprint(world.logs)
    assert tags["promotion_lam"] == str(LAM)

    # the same policy again, and the uniform one, are not clearly better: refused, alias unchanged
    for challenger in (same, uniform):
        assert main(["promote", challenger, "--logs", logs]) == 1
        err = last_error(capsys)
        assert err.startswith("refused: ") and "'champion' is unchanged" in err
        assert champion() == good

    # --force overrides the gate, and says so
    assert main(["promote", uniform, "--logs", logs, "--force"]) == 0
    tags = registry.resolve("champion").tags
    assert champion() == uniform
    assert (tags["promotion_gate"], tags["promotion_forced"]) == ("forced", "true")
    assert float(tags["promotion_dr_reward"]) < float(tags["promotion_previous_dr_reward"])
    # ... also without logs, and figures from an earlier promotion do not linger
    assert main(["promote", good, "--force"]) == 0
    tags = registry.resolve("champion").tags
    assert champion() == good and tags["promotion_forced"] == "true" and "promotion_dr_reward" not in tags


@pytest.mark.parametrize(
    ("mutate", "extra", "fragment"),
    [
        (lambda df: df.drop("candidates"), [], "'candidates' is missing"),
        (lambda df: df.with_columns(pl.lit(0.0).alias("propensity")), [], "'propensity' must lie in (0, 1]"),
        (
            lambda df: df.with_columns(
                pl.lit("gpt-5").alias("model"), pl.col("candidates").list.concat(pl.lit(["gpt-5"]))
            ),
            [],
            "logs 'model': model(s) not in the catalog: gpt-5",
        ),
        (lambda df: df.with_columns(pl.lit(None, dtype=pl.Float64).alias("quality")), [], "2 graded events"),
        (lambda df: df, ["--clip", "0"], "'clip'"),
        (lambda df: df, ["--lam", "-1"], "'lam'"),
        (lambda df: df, ["--policy", "7"], "no version or alias '7'"),
    ],
)
def test_evaluate_bad_input_exits_2(
    home: Path,
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[pl.DataFrame], pl.DataFrame],
    extra: list[str],
    fragment: str,
) -> None:
    logs, out = tmp_path / "logs.parquet", tmp_path / "report.json"
    mutate(pl.read_parquet(world.logs)).write_parquet(logs)
    args = ["evaluate", "--policy", str(world.good), "--logs", str(logs), "--json", str(out), *extra]
    assert main(args) == 2
    err = last_error(capsys)
    assert err.startswith("error: ") and fragment in err, err
    assert not out.exists(), "nothing is written"
