"""Caches bounded in bytes: the LRU itself, and the policy's caches under traffic that never repeats."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.bounded import ByteLRU
from router_ml.policy import CANDIDATE_CACHE_BYTES, SHARED_CACHE_BYTES


def test_lru_holds_at_most_its_bound_and_evicts_the_least_recently_used() -> None:
    cache: ByteLRU[int, bytes] = ByteLRU(1000, lambda key, value: len(value))
    for i in range(100):
        cache.put(i, b"x" * 90)
        assert cache.nbytes <= 1000
        cache.get(0)  # kept fresh
    assert len(cache) == 11 and 0 in cache and 98 in cache and 1 not in cache
    cache.put(-1, b"x" * 1001)  # larger than the whole bound: not kept, nothing evicted for it
    assert -1 not in cache and len(cache) == 11
    assert cache.pop(0) == b"x" * 90 and cache.nbytes == 900
    with pytest.raises(ValueError, match="max_bytes"):
        ByteLRU(-1, lambda key, value: 0)


def test_policy_caches_stay_within_their_bounds_and_change_no_decision(policy_artifact: PolicyArtifact) -> None:
    policy, plain = policy_artifact.policy.copy(), policy_artifact.policy.copy()
    assert policy.shared_cache.max_bytes == SHARED_CACHE_BYTES and policy._offered.max_bytes == CANDIDATE_CACHE_BYTES
    policy.shared_cache.max_bytes = 40 * (30 << 10)
    policy._offered.max_bytes = policy._cores.max_bytes = 5_000
    plain.shared_cache.max_bytes = 0
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 384)).astype(np.float32)
    names = policy.catalog.names
    lists = itertools.cycle(list(itertools.permutations(names, 2)) + [list(p) for p in itertools.permutations(names)])
    for context, other, candidates in zip(
        policy.featurizer.shared(embeddings), plain.featurizer.shared(embeddings), lists
    ):
        looks = [
            p.decide(c, np.random.default_rng(0), candidates, prompt_tokens=1.0)
            for p, c in ((policy, context), (plain, other))
        ]
        assert looks[0] == looks[1]
        assert (
            policy.decide(context, np.random.default_rng(0), candidates, prompt_tokens=1.0) == looks[0]
        )  # a cache hit
        assert policy.shared_cache.nbytes <= policy.shared_cache.max_bytes
        assert policy._offered.nbytes <= 5_000 and policy._cores.nbytes <= 5_000
    assert 30 <= len(policy.shared_cache) < 40 and len(plain.shared_cache) == 0
    assert 0 < len(policy._offered) < 36
