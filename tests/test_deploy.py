"""The scale-out deployment (deploy/compose.yaml) runs only commands the tests run.

The router replicas', the learner's and the jobs' command lines must parse with the real CLI and be the roles the
scale tests start; the MLflow server's flags and quiet environment must be the test kit's; the shared serve.toml must
load. The embedding job runs as written on a real local Ray in test_batch_embed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from router_ml.cli import build_parser
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
