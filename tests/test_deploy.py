"""The scale-out deployment (deploy/compose.yaml) runs only commands the tests run.

The router replicas', the learner's and the jobs' command lines must parse with the real CLI and be the roles the
scale tests start; the MLflow server's flags and quiet environment must be the test kit's; the shared serve.toml must
load; and the embedding job runs here as written (its Parquet path swapped for a test file) on a real local Ray.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from router_ml.cli import build_parser
from router_ml.embed import EmbeddingCache
from serve.config import ServeConfig
from tests.mlflowkit import QUIET, command

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return found


def flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def test_router_learner_and_job_commands_are_the_tested_roles() -> None:
    parser = build_parser()
    router = parser.parse_args(services()["router"]["command"][1:])
    assert (router.command_name, router.role) == ("serve", "router")
    learner = parser.parse_args(services()["learner"]["command"][1:])
    assert (learner.command_name, learner.follow) == ("learn", True)
    job = parser.parse_args(services()["jobs"]["command"][1:])
    assert job.command_name == "embed" and job.ray == "auto"
    for name in ("router", "learner", "jobs"):
        assert services()[name]["command"][0] == "router-ml"


def test_the_mlflow_server_runs_with_the_test_kits_flags_and_quiet_environment() -> None:
    mlflow = services()["mlflow"]
    assert mlflow["command"][:2] == ["mlflow", "server"]
    assert flags(mlflow["command"]) == flags(command("postgresql+psycopg://x", Path("/a"), 1))
    assert QUIET.items() <= {k: str(v) for k, v in mlflow["environment"].items()}.items()
    workers = mlflow["command"][mlflow["command"].index("--workers") + 1]
    assert workers == "1"


def test_the_shared_config_loads_and_holds_no_password() -> None:
    config = ServeConfig.load(str(DEPLOY / "serve.toml"))
    assert config.log.url.startswith("postgresql://") and ":" not in config.log.url.split("@")[0].split("//")[1]
    assert config.policy.tracking_uri == "http://mlflow:5000"


def test_the_embedding_job_runs_as_written_on_a_local_ray(tmp_path: Path, learning_benchmark: Path) -> None:
    """The compose file's job, its Parquet path swapped for a test file: every prompt lands in the cache."""
    pytest.importorskip("ray")
    logs = tmp_path / "logs.parquet"
    prompts = pl.read_parquet(learning_benchmark)["prompt"].unique(maintain_order=True).head(40).to_list()
    pl.DataFrame({"prompt": prompts}).write_parquet(logs)
    job = [str(logs) if arg == "/data/logs.parquet" else arg for arg in services()["jobs"]["command"]]
    env = {**os.environ, "ROUTER_ML_HOME": str(tmp_path / "home")}
    cli = [sys.executable, "-m", "router_ml.cli", *job[1:], "--workers", "2"]
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"embedded {len(prompts)} new prompts" in done.stdout and "ray (2 workers)" in done.stdout
    found = re.search(r"with (\S+) on", done.stdout)
    assert found is not None
    cache = EmbeddingCache(tmp_path / "home" / "embeddings.sqlite")
    try:
        assert cache.count(found.group(1)) == len(prompts)
    finally:
        cache.close()
