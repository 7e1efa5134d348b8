"""A router: the embedder and the policy together, from prompt text to a :class:`Decision`.

``route`` is ``embed`` then ``decide``; a service calls the two apart, so that embedding runs on request
threads while only the policy's single owner calls ``decide``. ``decide`` serves the policy's operating point,
or the router at another cost weight (:mod:`router_ml.budget`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router_ml.artifacts import PolicyArtifact
from router_ml.cost_model import estimate_tokens
from router_ml.embed import Embedder, VectorStore
from router_ml.encoders import build_embedder
from router_ml.operating import OperatingPoint
from router_ml.policy import Decision, Policy


class Router:
    """Embeds prompts and asks the policy; one object per loaded policy version."""

    def __init__(self, policy: Policy, embedder: Embedder, version: str = "local") -> None:
        self.policy = policy
        self.embedder = embedder
        self.version = version

    @classmethod
    def from_artifact(
        cls, artifact: PolicyArtifact, *, version: str = "local", cache: VectorStore | None = None
    ) -> Router:
        """The policy with the embedder it was trained with."""
        return cls(artifact.policy, build_embedder(artifact.embedder, cache=cache), version)

    def embed(self, prompt: str) -> npt.NDArray[np.float32]:
        """The prompt's embedding (safe to call from any thread the embedder allows)."""
        return np.asarray(self.embedder.encode([prompt])[0], dtype=np.float32)

    def decide(
        self,
        embedding: npt.NDArray[np.float32],
        rng: np.random.Generator,
        *,
        candidates: Sequence[str] | None = None,
        lam: float | None = None,
        point: OperatingPoint | None = None,
        prompt_tokens: int = 1,
    ) -> Decision:
        """Sample a model (exploring) for the reward ``quality - lam * cost_per_1k`` when ``lam`` is given, else at
        ``point`` (default: the policy's operating point); each model is priced for a prompt of ``prompt_tokens``
        tokens."""
        return self.policy.decide(embedding, rng, candidates, prompt_tokens=prompt_tokens, lam=lam, point=point)

    def route(
        self,
        prompt: str,
        rng: np.random.Generator,
        candidates: Sequence[str] | None = None,
        lam: float | None = None,
    ) -> Decision:
        """Embed ``prompt`` and sample a model for it, with its probability and the full distribution."""
        return self.decide(
            self.embed(prompt), rng, candidates=candidates, lam=lam, prompt_tokens=estimate_tokens(prompt)
        )

    def observe_usage(self, model: str, output_tokens: int) -> None:
        """Count one metered completion length of ``model`` in the policy's cost model."""
        self.policy.costs.observe_output_tokens(self.policy.catalog.index(model), output_tokens)

    def expected_cost_per_1k(self, prompt_tokens: int) -> npt.NDArray[np.float64]:
        """Each model's expected cost in USD per 1,000 requests of ``prompt_tokens`` tokens (catalog order)."""
        return self.policy.costs.per_1k(prompt_tokens)

    def choose_greedy(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        """The most likely model and its probability for each prompt (no exploration)."""
        tokens = [estimate_tokens(p) for p in prompts]
        probs = self.policy.predict_many(self.embedder.encode(prompts), prompt_tokens=tokens)
        best = probs.argmax(axis=1)
        return [(self.policy.catalog.names[j], float(probs[i, j])) for i, j in enumerate(best)]
