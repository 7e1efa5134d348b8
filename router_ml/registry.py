"""Policy versions in MLflow: one run per policy version, registered as a model version, promoted by alias; and the
one way to load a policy from any reference (:func:`load_policy`).

The default store is local and needs no server: ``sqlite:///$ROUTER_ML_HOME/mlflow.db`` with
artifacts in ``$ROUTER_ML_HOME/mlartifacts``. ``MLFLOW_TRACKING_URI`` (or an explicit URI) points it
anywhere else. MLflow telemetry is switched off unless the user switched it on. What a version records is
:mod:`router_ml.mlflow_schema`.

Each version is an MLflow pyfunc model (:mod:`router_ml.pyfunc_model`) whose ``predict`` routes a
frame of prompts, so generic MLflow tooling can load it; router-ml itself loads the policy folder
directly, which is faster.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from router_ml import mlflow_schema, settings
from router_ml.artifacts import PolicyArtifact
from router_ml.errors import UnknownName

DEFAULT_MODEL_NAME = "router-ml"
DEFAULT_EXPERIMENT = "router-ml"
CHAMPION = "champion"
POLICY_ARTIFACT = "policy"
MODEL_ARTIFACT = "model"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
INPUT_EXAMPLE_PROMPT = "What is the integral of x^2?"


def pip_requirements() -> list[str]:
    """What a version's environment needs: router-ml's own runtime dependencies (the list pyproject.toml reads,
    so the default ONNX backend's onnxruntime and onnx among them), and router-ml itself."""
    text = resources.files("router_ml").joinpath("resources/requirements.txt").read_text(encoding="utf-8")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [*(line for line in lines if line), "router-ml"]


class RegistryError(UnknownName):
    """A version or alias could not be found or set."""


@dataclass(frozen=True)
class VersionInfo:
    """A registered policy version."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    tags: dict[str, str]


def _pyfunc_model(artifact: PolicyArtifact, tmp: Path) -> Path:
    """The policy folder wrapped as an MLflow pyfunc model (models from code) under ``tmp``, with its signature,
    an input example and explicit pip requirements."""
    import mlflow
    import pandas as pd

    folder = artifact.save(tmp / POLICY_ARTIFACT)
    model = tmp / MODEL_ARTIFACT
    mlflow.pyfunc.save_model(
        model,
        python_model=str(PYFUNC_CODE),
        artifacts={POLICY_ARTIFACT: str(folder)},
        pip_requirements=pip_requirements(),
        signature=_signature(),
        input_example=pd.DataFrame({"prompt": [INPUT_EXAMPLE_PROMPT]}),
    )
    return model


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
        settings.quiet_mlflow()
        import mlflow

        self.tracking_uri = tracking_uri or settings.tracking_uri()
        self.model_name = model_name
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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
        params: dict[str, Any] | None = None,
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> VersionInfo:
        """One MLflow run with the version's parameters (:func:`~router_ml.mlflow_schema.version_params`, plus
        ``params``), ``metrics``, ``tags`` and the policy as a pyfunc model, registered as a new model version.

        Everything goes through this registry's own client (MLflow's process-wide store is left alone).
        Registration is the last step: a run that fails before it is marked FAILED and leaves no version.
        """
        from mlflow.entities import Metric, Param

        logged = mlflow_schema.version_params(artifact.policy, artifact.embedder, artifact.parent_version)
        logged |= mlflow_schema.as_params(params or {})
        run = self._client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
        run_id = run.info.run_id
        try:
            now = int(time.time() * 1000)
            self._client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                params=[Param(k, v) for k, v in logged.items()],
            )
            with tempfile.TemporaryDirectory() as tmp:
                self._client.log_artifacts(run_id, str(_pyfunc_model(artifact, Path(tmp))), MODEL_ARTIFACT)
            if not self._client.search_registered_models(f"name = '{self.model_name}'"):
                self._client.create_registered_model(self.model_name)
            mv = self._client.create_model_version(
                self.model_name, f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags
            )
        except BaseException:
            self._client.set_terminated(run_id, "FAILED")
            raise
        self._client.set_terminated(run_id, "FINISHED")
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

    def newest(self, tags: dict[str, str]) -> VersionInfo | None:
        """The newest version carrying every tag in ``tags``, or None. One search however many versions there are
        (a replica asks this every few seconds)."""
        clauses = [f"name = '{self.model_name}'"]
        for key, value in tags.items():
            quote = "'" if "'" not in value else '"'
            if "`" in key or quote in value:
                raise RegistryError(f"registry: cannot search for the tag {key!r} = {value!r}")
            clauses.append(f"tags.`{key}` = {quote}{value}{quote}")
        found = self._client.search_model_versions(
            " AND ".join(clauses), max_results=1, order_by=["version_number DESC"]
        )
        return self._info(found[0]) if found else None

    def resolve(self, ref: str | PolicyRef) -> VersionInfo:
        """A version from ``"3"``, ``"champion"`` (an alias) or ``"models:/name@alias"`` / ``"models:/name/3"``."""
        from mlflow.exceptions import MlflowException

        parsed = ref if isinstance(ref, PolicyRef) else PolicyRef.parse(ref, self.model_name, folders=False)
        if parsed.kind == "folder":
            raise RegistryError(f"registry: '{parsed.value}' is a policy folder, not a version or alias")
        try:
            if parsed.kind == "version":
                return self._info(self._client.get_model_version(self.model_name, parsed.value))
            return self._info(self._client.get_model_version_by_alias(self.model_name, parsed.value))
        except MlflowException as exc:
            raise RegistryError(
                f"registry: no version or alias '{parsed.value}' of model '{self.model_name}'"
            ) from exc

    def promote(self, ref: str, alias: str = CHAMPION, tags: dict[str, str] | None = None) -> VersionInfo:
        """Point ``alias`` at the version ``ref`` names; ``tags`` are set on that version."""
        info = self.resolve(ref)
        self._client.set_registered_model_alias(self.model_name, alias, info.version)
        for key, value in (tags or {}).items():
            self._client.set_model_version_tag(self.model_name, info.version, key, value)
        return self.resolve(info.version)

    def load(self, ref: str | PolicyRef) -> tuple[PolicyArtifact, VersionInfo]:
        """Download and load the policy a version or alias names."""
        import mlflow

        info = self.resolve(ref)
        source = self._client.get_model_version_download_uri(self.model_name, info.version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri)
        local = str(Path(local) / "artifacts" / POLICY_ARTIFACT)
        return PolicyArtifact.load(local), info


@dataclass(frozen=True)
class PolicyRef:
    """What names a policy: a policy ``folder``, a registry ``version`` (``"3"``, ``"models:/router-ml/3"``) or an
    ``alias`` (``"champion"``, ``"models:/router-ml@champion"``). ``value`` is the folder, the number or the alias.
    """

    kind: Literal["folder", "version", "alias"]
    value: str

    @classmethod
    def parse(cls, text: str, model_name: str = DEFAULT_MODEL_NAME, *, folders: bool = True) -> PolicyRef:
        """Read a reference as the command line and the service configuration give it; an existing folder wins
        (unless ``folders`` is False: then only the registry is asked)."""
        if not text:
            raise RegistryError("registry: a policy reference must not be empty")
        if folders and Path(text).is_dir():
            return cls("folder", text)
        if text.startswith("models:/"):
            rest = text.removeprefix("models:/")
            if not rest.startswith(model_name) or rest[len(model_name) : len(model_name) + 1] not in ("/", "@"):
                raise RegistryError(f"registry: '{text}' does not name model '{model_name}'")
            text = rest[len(model_name) + 1 :]
        return cls("version" if text.isdigit() else "alias", text)

    @property
    def alias(self) -> str | None:
        """The alias this reference follows (a service reloads when it moves), or None."""
        return self.value if self.kind == "alias" else None


@dataclass(frozen=True)
class LoadedPolicy:
    """A loaded policy and where it came from: ``label`` is the version number or ``file:<folder>``; ``version`` is
    the registry's record (None for a folder)."""

    artifact: PolicyArtifact
    label: str
    version: VersionInfo | None


def load_policy(ref: str | PolicyRef, registry: PolicyRegistry | None = None) -> LoadedPolicy:
    """The policy ``ref`` names: a folder is read as it is (no registry is opened), anything else from ``registry``
    (default: the default store)."""
    parsed = ref if isinstance(ref, PolicyRef) else PolicyRef.parse(ref)
    if parsed.kind == "folder":
        return LoadedPolicy(PolicyArtifact.load(parsed.value), f"file:{parsed.value}", None)
    artifact, info = (registry or PolicyRegistry()).load(parsed)
    return LoadedPolicy(artifact, info.version, info)
