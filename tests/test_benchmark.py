"""The benchmark protocol end to end on a small real slice: online and offline bandit policies and references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router_ml.cli import main
from router_ml.contracts import load_benchmark
from router_ml.fullinfo import FullInfo
from router_ml.references import KnnRouter, oracle, per_category
from router_ml.replay import best_single, replay_choices
from tests.conftest import slice_benchmark


@pytest.fixture(scope="module")
def split(learning_benchmark: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("split")
    assert (
        main(
            [
                "split",
                "--benchmark",
                str(learning_benchmark),
                "--train-out",
                str(out / "train.parquet"),
                "--test-out",
                str(out / "test.parquet"),
            ]
        )
        == 0
    )
    return out / "train.parquet", out / "test.parquet"


def test_split_is_disjoint_and_complete(split: tuple[Path, Path], learning_benchmark: Path) -> None:
    train, test = (load_benchmark(p) for p in split)
    tr, te = set(train["prompt_id"]), set(test["prompt_id"])
    assert not tr & te
    assert tr | te == set(load_benchmark(learning_benchmark)["prompt_id"])
    assert 0.1 < len(te) / (len(tr) + len(te)) < 0.3


def test_references_are_ordered_sensibly(split: tuple[Path, Path], embedder) -> None:  # type: ignore[no-untyped-def]
    train = FullInfo.from_benchmark(load_benchmark(split[0]))
    test = FullInfo.from_benchmark(load_benchmark(split[1]), models=train.models)
    best = best_single(test)
    lam = 0.0
    orc = replay_choices(test, oracle(test, lam), "oracle")
    cat = replay_choices(test, per_category(train, test, lam), "cat")
    knn = KnnRouter(train, embedder.encode(train.prompts), embedder.encode(test.prompts), k=10)
    kq = replay_choices(test, knn.choose(lam), "knn")
    assert orc.quality >= max(best.quality, cat.quality, kq.quality)
    assert orc.quality > 0.9
    # a huge cost penalty makes every router pick cheap models
    cheap = replay_choices(test, knn.choose(100.0), "knn-cheap")
    assert cheap.cost_usd < kq.cost_usd


def _bench(split: tuple[Path, Path], out_json: Path, *flags: str) -> int:
    return main(["benchmark", "--train", str(split[0]), "--test", str(split[1]), "--json", str(out_json), *flags])


def test_benchmark_protocol_writes_operating_points_frontiers_and_plot(
    split: tuple[Path, Path], home: Path, tmp_path: Path
) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    assert _bench(split, out_json, "--plot", str(out_png), "--quick", "--clusters", "4,16") == 0
    result = json.loads(out_json.read_text())
    assert result["protocol"] == 2 and result["best_single"]["decided_on"] == "train"
    assert result["config"]["seeds"] == 2 and result["config"]["folds"] == 2
    lams = result["lams"]
    assert lams[0] == 0.0 and lams == sorted(lams) and len(lams) == 25
    routers = result["routers"]
    for name in ("router_ml", "router_ml_offline", "per_category", "knn100", "single_model_hull", "oracle"):
        assert {"points", "q_max", "cost_at_parity", "cost_at_97_5", "auc"} <= set(routers[name]), name
    assert len(routers["router_ml"]["points"]) == len(routers["router_ml"]["points_sd"]) == len(lams)
    assert result["router_ml"] == routers["router_ml"]
    # one learned quality model per seed: its greedy choice only gets cheaper as lam grows, so does the seed average
    costs = [c for c, _ in routers["router_ml"]["points"]]
    assert all(np.diff(costs) <= 1e-12) and costs[-1] < costs[0]
    # the online policy learned something: its best point beats the median single model
    singles = sorted(v["q_max"] for k, v in routers.items() if k.startswith("single:"))
    assert routers["router_ml"]["q_max"] > singles[len(singles) // 2]

    best = result["best_single"]
    ops = result["operating_points"]
    assert set(ops) == {"router_ml", "router_ml_offline", "per_category", "knn100", "single_model_hull"}
    for name, targets in ops.items():
        assert list(targets) == ["parity", "quality:0.975", "budget:10%", "budget:25%"], name
        for label, op in targets.items():
            assert op["quality_frac"] == pytest.approx(op["quality"] / best["quality"])
            assert op["cost_frac"] == pytest.approx(op["cost_usd"] / best["cost"])
            assert op["quality_frac_sd"] >= 0 and op["cost_frac_sd"] >= 0
            weights = op["point"]["weights"]
            assert abs(sum(weights) - 1) < 1e-9 and 1 <= len(weights) <= 2, (name, label)
        # budgets are chosen within the budget on validation (TRAIN), and every router may fall back on singles
        train_cost_per_1k = targets["budget:25%"]["validation_cost_per_1k"]
        assert targets["budget:10%"]["validation_cost_per_1k"] <= train_cost_per_1k + 1e-9
    # the hull, chosen on TRAIN, is never above the TEST hull at the cost it spends
    assert all(op["margin_over_hull"] <= 1e-9 for op in ops["single_model_hull"].values())
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmark_rejects_bad_input(home: Path, tmp_path: Path, shared_benchmark: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = slice_benchmark(shared_benchmark, 20, tmp_path / "bad.parquet")
    import polars as pl

    pl.read_parquet(bad).with_columns(pl.lit(2.0).alias("quality")).write_parquet(bad)
    assert main(["benchmark", "--train", str(bad), "--test", str(bad), "--json", str(tmp_path / "x.json")]) == 2
    assert "'quality' must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lams", "0.1,abc"], "--lams must be comma-separated numbers"),
        (["--lams", "-1"], "'lams' must be finite numbers > 0"),
        (["--collect", "0.1"], "--collect must be two numbers"),
        (["--collect", "0.5,0.1"], "'collect' must be a range"),
        (["--folds", "1"], "'folds' >= 2"),
        (["--targets", "parity,cheaper"], "target: 'cheaper' is not"),
        (["--modes", "online,sideways"], "'modes' must be online and/or offline"),
        (["--events-per-prompt", "0"], "'events_per_prompt' must be > 0"),
    ],
)
def test_benchmark_rejects_bad_flags(  # type: ignore[no-untyped-def]
    split: tuple[Path, Path], home: Path, tmp_path: Path, capsys, flags: list[str], fragment: str
) -> None:
    out = tmp_path / "x.json"
    assert main(["benchmark", "--train", str(split[0]), "--test", str(split[1]), "--json", str(out), *flags]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()
