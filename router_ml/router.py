"""A router: the embedder and the policy together, from prompt text to a :class:`Decision`.

``route`` is ``embed`` then ``decide``; a service calls the two apart, so that embedding runs on request
threads while only the policy's single owner calls ``decide``. ``decide`` may re-price the policy's
distribution for another cost weight (:mod:`router_ml.budget`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router_ml.artifacts import PolicyArtifact
from router_ml.budget import estimate_tokens, expected_cost_per_1k, retarget
from router_ml.embed import Embedder, EmbeddingCache
from router_ml.policy import Decision, Policy

DEFAULT_OUTPUT_TOKENS = 256.0
"""Expected completion length before any usage has been observed for a model."""


class Router:
    """Embeds prompts and asks the policy; one object per loaded policy version.

    Each model's expected completion length (:meth:`expected_output_tokens`) comes from observed usage
    (:meth:`observe_usage`); with the prompt's length it prices each model for re-pricing.
    """

    def __init__(self, policy: Policy, embedder: Embedder, version: str = "local") -> None:
        self.policy = policy
        self.embedder = embedder
        self.version = version
        self._usage_sums = np.zeros(len(policy.catalog))
        self._usage_counts = np.zeros(len(policy.catalog))

    @classmethod
    def from_artifact(
        cls, artifact: PolicyArtifact, *, version: str = "local", cache: EmbeddingCache | None = None
    ) -> Router:
        """The policy with the embedder it was trained with."""
        return cls(artifact.policy, artifact.build_embedder(cache=cache), version)

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
        prompt_tokens: int = 1,
    ) -> Decision:
        """Sample a model (exploring). With ``lam`` other than the policy's own, the distribution is re-priced
        for the reward ``quality - lam * cost_per_1k`` using each model's expected cost on a prompt of
        ``prompt_tokens`` tokens."""
        probs = self.policy.distribution(self.policy.featurizer.shared(embedding.reshape(1, -1))[0], candidates)
        if lam is not None and lam != self.policy.config.lam:
            if not (np.isfinite(lam) and lam >= 0):
                raise ValueError(f"router: 'lambda' must be a finite number >= 0, got {lam}")
            costs = expected_cost_per_1k(self.policy.catalog, prompt_tokens, self.expected_output_tokens())
            probs = retarget(probs, self.policy.gamma, (lam - self.policy.config.lam) * costs)
        return self.policy.sample(probs, rng)

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
        """Count one observed completion length of ``model``."""
        j = self.policy.catalog.index(model)
        self._usage_sums[j] += output_tokens
        self._usage_counts[j] += 1

    def expected_output_tokens(self) -> npt.NDArray[np.float64]:
        """Per model (catalog order): its mean observed completion length, shrunk towards the mean over all
        models by one pseudo-observation, so a model not yet seen is priced like the others are used.
        Before any usage at all, every model gets :data:`DEFAULT_OUTPUT_TOKENS`."""
        total = self._usage_counts.sum()
        pooled = self._usage_sums.sum() / total if total else DEFAULT_OUTPUT_TOKENS
        return np.asarray((self._usage_sums + pooled) / (self._usage_counts + 1), dtype=np.float64)

    def choose_greedy(self, prompts: Sequence[str]) -> list[tuple[str, float]]:
        """The most likely model and its probability for each prompt (no exploration)."""
        probs = self.policy.predict_many(self.embedder.encode(prompts))
        best = probs.argmax(axis=1)
        return [(self.policy.catalog.names[j], float(probs[i, j])) for i, j in enumerate(best)]
