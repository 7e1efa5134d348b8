"""The MLflow pyfunc face of a policy version (logged as "models from code").

``mlflow.pyfunc.load_model("models:/router-ml@champion").predict(frame)`` routes each row's
``prompt`` greedily and returns the chosen ``model`` and its ``probability``.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel

POLICY_ARTIFACT = "policy"


class RouterModel(PythonModel):  # type: ignore[misc]  # mlflow is read as Any
    """Loads the policy folder and its embedder; predicts greedily."""

    def load_context(self, context: Any) -> None:
        """Build the router from the logged policy folder."""
        from router_ml.artifacts import PolicyArtifact
        from router_ml.router import Router

        self.router = Router.from_artifact(PolicyArtifact.load(context.artifacts[POLICY_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Greedy choice per prompt."""
        choices = self.router.choose_greedy([str(p) for p in model_input["prompt"]])
        return pd.DataFrame({"model": [m for m, _ in choices], "probability": [p for _, p in choices]})


mlflow.models.set_model(RouterModel())
