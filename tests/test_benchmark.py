"""The benchmark protocol end to end on a small real slice: online and offline bandit policies and references."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_benchmark_command_writes_json_and_plot(split: tuple[Path, Path], home: Path, tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(
        [
            "benchmark",
            "--train",
            str(split[0]),
            "--test",
            str(split[1]),
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
            "--events-per-prompt",
            "6",
            "--lams",
            "0,0.05,1",
            "--clusters",
            "4,16",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    result = json.loads(out_json.read_text())
    assert set(result["best_single"]) == {"model", "quality", "cost"}
    routers = result["routers"]
    for name in ("router_ml", "router_ml_offline", "per_category", "knn100", "oracle", "single:gpt-4o"):
        assert {"points", "q_max", "cost_at_parity", "cost_at_97_5", "auc"} <= set(routers[name]), name
    assert len(routers["router_ml"]["points"]) == 3
    assert result["router_ml"] == routers["router_ml"]
    # the online policy learned something: its best point beats the median single model
    singles = sorted(v["q_max"] for k, v in routers.items() if k.startswith("single:"))
    assert routers["router_ml"]["q_max"] > singles[len(singles) // 2]
    # lam orders the online points by cost: the largest penalty is the cheapest
    costs = [c for c, _ in routers["router_ml"]["points"]]
    assert costs[-1] < costs[0]
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
        (["--lams", "-1"], "'lams' must be finite numbers >= 0"),
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
