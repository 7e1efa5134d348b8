"""The router-ml command line end to end on real files and a real MLflow store; bad input exits 2, naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from router_ml import settings
from router_ml.cli import main
from router_ml.cost_model import estimate_tokens
from router_ml.embed import CachedEmbedder
from router_ml.registry import PolicyRegistry
from tests.servekit import registered

SMALL_FEATURES = ["--clusters", "4,8"]


def test_simulate_train_promote_route(
    home: Path, small_benchmark: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs.parquet"
    assert (
        main(["simulate", "--benchmark", str(small_benchmark), "--events", "800", "--seed", "4", "-o", str(logs)]) == 0
    )
    assert pl.read_parquet(logs).height == 800
    assert main(["train", "--logs", str(logs), *SMALL_FEATURES, "--lam", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "registered router-ml version 1" in out
    assert registered(home) == ["1"], "the default store is project-local"
    assert main(["promote", "1"]) == 0
    assert main(["versions"]) == 0
    assert "champion" in capsys.readouterr().out
    assert main(["route", "--policy", "champion", "What is 2+2?"]) == 0
    routed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert routed["version"] == "1"
    assert routed["model"] in PolicyRegistry().load("1")[0].policy.catalog.names


def test_demo_trains_registers_and_reports(
    home: Path, small_benchmark: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--benchmark", str(small_benchmark), "--events-per-prompt", "3", *SMALL_FEATURES])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out replay" in out and "best" not in out.splitlines()[0]
    report = json.loads((home / "demo" / "report.json").read_text())
    assert report["version"] == "1"
    assert report["n_prompts"] > 0
    assert PolicyRegistry().resolve("champion").version == "1", "the first version becomes champion"


def test_benchmark_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(settings.BENCHMARK_ENV, str(tmp_path / "b.parquet"))
    assert settings.default_benchmark() == tmp_path / "b.parquet"


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda df: df.with_columns(pl.lit(1.7).alias("propensity")), "'propensity' must lie in (0, 1]"),
        (lambda df: df.drop("candidates"), "'candidates' is missing"),
        (lambda df: df.with_columns(pl.lit("gpt-5").alias("model")), "'model' is not among"),
    ],
)
def test_bad_logs_exit_2_with_the_column_named(
    home: Path,
    small_benchmark: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[pl.DataFrame], pl.DataFrame],
    fragment: str,
) -> None:
    logs = tmp_path / "logs.parquet"
    main(["simulate", "--benchmark", str(small_benchmark), "--events", "50", "-o", str(logs)])
    mutate(pl.read_parquet(logs)).write_parquet(logs)
    assert main(["train", "--logs", str(logs), *SMALL_FEATURES]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
    assert registered(home) == [], "nothing was registered"


def test_unknown_version_and_missing_file(home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["promote", "7"]) == 2
    assert "no version or alias '7'" in capsys.readouterr().err
    assert (
        main(["simulate", "--benchmark", str(tmp_path / "x.parquet"), "--events", "5", "-o", str(tmp_path / "o")]) == 2
    )
    assert "file not found" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    done = subprocess.run([Path(sys.executable).with_name("router-ml"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "simulate" in done.stdout and "train" in done.stdout and "demo" in done.stdout


def test_adding_a_model_warm_starts_instead_of_retraining(
    home: Path, small_benchmark: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], embedder: CachedEmbedder
) -> None:
    from router_ml.catalog import Catalog

    full = Catalog.load(settings.default_catalog())
    newcomer = "gemini-1.5-flash"
    old = Catalog(tuple(m for m in full.models if m.name != newcomer))
    old.save(tmp_path / "old.toml")
    full.save(tmp_path / "full.toml")
    bench = pl.read_parquet(small_benchmark)
    bench.filter(pl.col("model") != newcomer).write_parquet(tmp_path / "without.parquet")
    for name, source in (("before", tmp_path / "without.parquet"), ("after", small_benchmark)):
        args = ["simulate", "--benchmark", str(source), "--events", "1500", "-o", str(tmp_path / f"{name}.parquet")]
        assert main(args) == 0
    assert (
        main(
            [
                "train",
                "--logs",
                str(tmp_path / "before.parquet"),
                "--catalog",
                str(tmp_path / "old.toml"),
                *SMALL_FEATURES,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--logs",
                str(tmp_path / "after.parquet"),
                "--catalog",
                str(tmp_path / "full.toml"),
                "--warm-start",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    registry = PolicyRegistry()
    v1, _ = registry.load("1")
    v2, info = registry.load("2")
    assert newcomer not in v1.policy.catalog and newcomer in v2.policy.catalog
    assert v2.parent_version == "1" and info.tags["parent_version"] == "1"
    assert v2.policy.updates == v1.policy.updates + 1500, "version 2 continued version 1, it did not restart"
    assert v2.policy.featurizer.centroids[0].tobytes() == v1.policy.featurizer.centroids[0].tobytes()
    prompts = pl.read_parquet(small_benchmark)["prompt"].unique().sort().head(20).to_list()
    probs = v2.policy.predict_many(embedder.encode(prompts), prompt_tokens=[estimate_tokens(p) for p in prompts])
    assert (probs[:, v2.policy.catalog.index(newcomer)] > 0).all(), "the new model is offered (explored) everywhere"
