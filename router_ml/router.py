"""A router: the embedder and the policy together, from prompt text to a :class:`Decision`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router_ml.artifacts import PolicyArtifact
from router_ml.embed import Embedder, EmbeddingCache
from router_ml.policy import Decision, Policy


class Router:
    """Embeds prompts and asks the policy; one object per loaded policy version."""

    def __init__(self, policy: Policy, embedder: Embedder, version: str = "local") -> None:
        self.policy = policy
        self.embedder = embedder
        self.version = version

    @classmethod
    def from_artifact(
        cls, artifact: PolicyArtifact, *, version: str = "local", cache: EmbeddingCache | None = None
    ) -> Router:
        """The policy with the embedder it was trained with."""
        return cls(artifact.policy, artifact.build_embedder(cache=cache), version)

    def route(self, prompt: str, rng: np.random.Generator, candidates: Sequence[str] | None = None) -> Decision:
        """Sample a model for ``prompt`` (exploring), with its probability and the full distribution."""
        embedding = self.embedder.encode([prompt])[0]
        return self.policy.decide(embedding, rng, candidates)

    def choose_greedy(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        """The most likely model and its probability for each prompt (no exploration)."""
        probs = self.policy.predict_many(self.embedder.encode(prompts))
        best = probs.argmax(axis=1)
        return [(self.policy.catalog.names[j], float(probs[i, j])) for i, j in enumerate(best)]
