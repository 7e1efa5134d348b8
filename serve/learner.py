"""The online learner: the single owner of the policy, which decides, learns, snapshots and reloads.

Every touch of the VW model runs on one thread (``policy`` executor), so decisions and updates never
overlap. MLflow work (snapshots, alias polling, loading a new champion) runs on a second thread
(``registry`` executor) and hands results to the policy thread.

Nothing acknowledged is lost from the model, nor learned twice: feedback is committed to the decision log
and queued to the policy thread under one lock, so the policy thread learns it in sequence order and
knows, after each update, the sequence number ``W`` up to which the model holds every feedback. A
snapshot is frozen on that thread together with its ``W`` (so its tags are exact whatever the timing:
during a replay, behind a slow or failed registration), and a restart (or a reload of a version this log
produced) replays the feedback committed after the snapshot's ``W``. A queued update at or below ``W``
(learned first by a replay) is skipped.

Scaled out, the same class plays two roles on a shared log (:mod:`router_ml.log_store`): a router replica
(``learns=False``) decides and commits grades but learns nothing; it counts new grades into its savings estimate
and serves the newest snapshot the learner published (:meth:`OnlineLearner.refresh`). The single learner
(:func:`follow`, ``router-ml learn --follow``) reads the grades from the log in sequence order
(:meth:`OnlineLearner.follow_once`) and publishes snapshots. Whoever learns holds the log's learner lock, so two
learners never both publish.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from router_ml.artifacts import PolicyArtifact
from router_ml.bounded import ByteLRU
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import CostBound, DecisionLog, GradedDecision
from router_ml.operating import OperatingPoint
from router_ml.policy import Decision
from router_ml.registry import PolicyRegistry, VersionInfo
from router_ml.router import Router
from router_ml.savings import LiveSavings
from serve.config import LearningConfig
from serve.metrics import Metrics

log = logging.getLogger("router_ml.serve")
T = TypeVar("T")

MEMO_BYTES = 32 << 20
"""Bound of the embeddings kept between a decision and its feedback (about 20,000 of MiniLM's 384 floats); the
least recently decided leave first, and their feedback embeds the prompt again."""

TAG_SOURCE, TAG_PARENT, TAG_BASE, TAG_LOG, TAG_SEQ = (
    "source",
    "parent_version",
    "base_version",
    "log_id",
    "feedback_seq",
)


@dataclass(frozen=True)
class Loaded:
    """A policy as loaded: the artifact, its version label, and the registry version it descends from."""

    artifact: PolicyArtifact
    version: str
    base_version: str
    tags: dict[str, str]


class OnlineLearner:
    """Owns a :class:`Router`; decides and learns on one thread, snapshots to MLflow on another."""

    def __init__(
        self,
        loaded: Loaded,
        router: Router,
        decision_log: DecisionLog,
        registry: PolicyRegistry,
        config: LearningConfig,
        metrics: Metrics,
        *,
        alias: str | None,
        savings: LiveSavings,
        learns: bool = True,
    ) -> None:
        self.router = router
        self.learns = learns
        self.savings = savings
        self._savings_seq = 0  # the savings estimate holds every grade up to this sequence number
        self.log = decision_log
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.alias = alias
        self._artifact = loaded.artifact
        self._version = loaded.version
        self._base = loaded.base_version
        self._updates_at_version = router.policy.updates
        self._rng = np.random.default_rng(config.seed)
        self._policy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy")
        self._registry = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self._memo: ByteLRU[str, npt.NDArray[np.float32]] = ByteLRU(MEMO_BYTES, _memo_bytes)
        _serving(router)
        self._seq_lock = threading.Lock()
        self._seq = 0  # the model holds every feedback up to this sequence number (policy thread only)
        self._last_snapshot = time.monotonic()
        self._snapshotting = False
        self.applied = 0

    # -- the policy thread ----------------------------------------------------------------------
    async def _on_policy(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._policy, fn)

    @property
    def version(self) -> str:
        """The loaded version, with ``+n`` for the online updates made since."""
        extra = self.router.policy.updates - self._updates_at_version
        return f"{self._version}+{extra}" if extra else self._version

    async def decide(
        self,
        decision_id: str,
        embedding: npt.NDArray[np.float32],
        *,
        candidates: Sequence[str] | None,
        lam: float | None,
        point: OperatingPoint | None = None,
        prompt_tokens: int,
    ) -> tuple[Decision, str]:
        """Sample a model on the policy thread (the router alone at ``lam``, else ``point``, else the policy's
        operating point); returns the decision and the version that made it."""

        def run() -> tuple[Decision, str]:
            decision = self.router.decide(
                embedding, self._rng, candidates=candidates, lam=lam, point=point, prompt_tokens=prompt_tokens
            )
            self._memo.put(decision_id, embedding)
            return decision, self.version

        return await self._on_policy(run)

    async def observe_usage(self, model: str, output_tokens: int) -> None:
        """Fold a metered completion length into the router's cost estimate."""
        await self._on_policy(lambda: self.router.observe_usage(model, output_tokens))

    def record_feedback(
        self,
        decision_id: str,
        quality: float,
        cost_usd: float | None,
        *,
        tenant: str | None = None,
        cost_bound: CostBound | None = None,
    ) -> GradedDecision:
        """Commit feedback to the log and queue the update (call from a worker thread, not the event loop).

        The commit and the queueing happen under one lock, so updates reach the policy thread in sequence
        order. ``tenant`` and ``cost_bound`` are checked by :meth:`DecisionLog.record_feedback`.
        """
        with self._seq_lock:
            graded = self.log.record_feedback(decision_id, quality, cost_usd, tenant=tenant, cost_bound=cost_bound)
            if self.learns:  # a router replica only commits: the learner reads it from the log
                self._policy.submit(self._learn, graded)
        return graded

    def _learn(self, graded: GradedDecision) -> bool:
        """On the policy thread: learn one feedback unless the model holds it already. True if learned."""
        if graded.seq <= self._seq:
            return False
        try:
            if graded.learnable:
                embedding = self._memo.pop(graded.decision_id)
                if embedding is None:
                    embedding = self.router.embed(graded.prompt)
                self.router.policy.learn_one(
                    embedding,
                    graded.model,
                    graded.quality,
                    graded.cost_usd,
                    graded.propensity,
                    graded.candidates,
                    prompt_tokens=estimate_tokens(graded.prompt),
                    observe_cost=False,  # completion lengths are counted when the call is metered
                )
                self.applied += 1
                self.metrics.updates.set(self.router.policy.updates - self._updates_at_version)
        except Exception:  # a bad row must not stop the learner; the log keeps it for offline training
            log.exception("online update failed for decision %s", graded.decision_id)
        self._count_savings(graded)
        self._seq = graded.seq
        self._maybe_snapshot(by_time=False)
        return True

    def _count_savings(self, graded: GradedDecision) -> None:
        """On the policy thread: fold one grade into the live savings estimate, once (a reload's replay skips it)."""
        if graded.seq <= self._savings_seq:
            return
        self._savings_seq = graded.seq
        catalog = self.router.policy.catalog
        if not graded.learnable or self.savings.reference not in catalog:
            return
        try:
            ref_cost = self.router.expected_cost_per_1k(estimate_tokens(graded.prompt))[
                catalog.index(self.savings.reference)
            ]
            self.savings.observe(
                graded.model,
                graded.propensity,
                graded.quality,
                graded.cost_usd,
                reference_offered=self.savings.reference in graded.candidates,
                reference_cost_per_1k=float(ref_cost),
            )
        except ValueError:
            log.exception("savings: grade of decision %s not counted", graded.decision_id)

    def catch_up(self, after_seq: int) -> int:
        """On the policy thread: the model holds feedback up to ``after_seq``; learn what the log has after it.

        Returns how many feedback rows were taken in.
        """
        self._seq = after_seq
        return sum(self._learn(graded) for graded in self.log.graded_since(after_seq))

    # -- snapshots ------------------------------------------------------------------------------
    def _maybe_snapshot(self, *, by_time: bool) -> Future[None] | None:
        """On the policy thread: take a snapshot when enough updates or time have passed."""
        new = self.router.policy.updates - self._updates_at_version
        due = new >= self.config.snapshot_every_updates or (
            by_time and new > 0 and time.monotonic() - self._last_snapshot >= self.config.snapshot_every_seconds
        )
        if not due or self._snapshotting:
            return None
        return self._snapshot()

    def _snapshot(self) -> Future[None]:
        policy = self.router.policy
        frozen = PolicyArtifact(
            policy=policy.copy(),
            embedder=self._artifact.embedder,
            embedder_path=self._artifact.embedder_path,
            parent_version=self._version,
        )
        tags = {
            TAG_SOURCE: "online",
            TAG_PARENT: self._version,
            TAG_BASE: self._base,
            TAG_LOG: self.log.log_id,
            TAG_SEQ: str(self._seq),
        }
        updates = policy.updates
        self._snapshotting = True
        self._last_snapshot = time.monotonic()

        def register() -> None:
            try:
                info = self.registry.log_version(
                    frozen,
                    params={"config": policy.config.to_json(), "updates": updates},
                    metrics={"online_updates": float(updates)},
                    tags=tags,
                    run_name=f"online-{self._base}",
                )
                self._policy.submit(self._snapshotted, info, updates, frozen).result()
                self.metrics.snapshots.inc()
            except Exception:
                log.exception("snapshot failed; the next one will retry")
                self._snapshotting = False

        return self._registry.submit(register)

    def _snapshotted(self, info: VersionInfo, updates: int, artifact: PolicyArtifact) -> None:
        self._version, self._updates_at_version, self._artifact = info.version, updates, artifact
        self._snapshotting = False

    # -- reloads --------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Periodic work: a time-based snapshot if one is due."""
        await self._on_policy(lambda: self._maybe_snapshot(by_time=True))

    def tick_now(self) -> None:
        """:meth:`tick` from a plain thread (the learner process)."""
        self._policy.submit(lambda: self._maybe_snapshot(by_time=True)).result()

    def poll_alias(self) -> bool:
        """On a worker thread: when the alias points at a new version, load it and swap it in. True if swapped."""
        if self.alias is None:
            return False
        info = self.registry.aliased(self.alias)
        if info is None or info.version == self._base:
            return False
        self._load(resolve_start(self.registry, self.alias, self.log))
        return True

    def _load(self, loaded: Loaded) -> None:
        """On a worker thread: build the router of ``loaded`` (reusing the embedder when it is the same) and swap it
        in on the policy thread, between two decisions."""
        same_embedder = loaded.artifact.embedder == self._artifact.embedder
        router = (
            Router(loaded.artifact.policy, self.router.embedder, loaded.version)
            if same_embedder
            else Router.from_artifact(loaded.artifact, version=loaded.version)
        )
        self._policy.submit(self._swap, loaded, router).result()
        self.metrics.reloads.inc()

    def _swap(self, loaded: Loaded, router: Router) -> None:
        _serving(router)
        self.router, self._artifact = router, loaded.artifact
        self._version, self._base = loaded.version, loaded.base_version
        self._updates_at_version = router.policy.updates
        self._memo.clear()
        if self.learns:
            self.catch_up(start_seq(self.log, loaded))

    def refresh(self) -> bool:
        """On a worker thread, for a router replica: count the grades committed since the last call into the savings
        estimate, and serve the newest snapshot the learner published of the same base version. True if swapped."""
        self._policy.submit(self._count_new_grades).result()
        newest = newest_snapshot(self.registry, self._base, self.log)
        if newest is None or newest.version == self._version:
            return False
        artifact, info = self.registry.load(newest.version)
        self._load(Loaded(artifact, info.version, self._base, info.tags))
        return True

    def _count_new_grades(self) -> None:
        for graded in self.log.graded_since(self._savings_seq):
            self._count_savings(graded)

    def follow_once(self) -> int:
        """For the learner: on the policy thread, learn the grades committed after the model's high-water mark, in
        sequence order. Returns how many were taken in."""
        return self._policy.submit(lambda: self.catch_up(self._seq)).result()

    def snapshot_now(self) -> None:
        """For a learner stopping gracefully: snapshot what was learned since the last snapshot, and wait for it."""
        done = self._policy.submit(
            lambda: self._snapshot() if self.router.policy.updates > self._updates_at_version else None
        ).result()
        if done is not None:
            done.result()

    def start(self, loaded: Loaded) -> int:
        """Before serving: count the log's grades in the savings estimate and learn what the log holds beyond the
        loaded version. Returns how many updates."""
        after = start_seq(self.log, loaded)

        def run() -> int:
            for graded in self.log.graded_since(0):
                if graded.seq > after:
                    break
                self._count_savings(graded)
            return self.catch_up(after)

        return self._policy.submit(run).result()

    def close(self) -> None:
        """Finish queued updates and registry work."""
        self._policy.shutdown(wait=True)
        self._registry.shutdown(wait=True)


def _serving(router: Router) -> None:
    """A service never decides twice on one context object, so its policy keeps no VW shared examples."""
    router.policy.shared_cache.max_bytes = 0


def _memo_bytes(decision_id: str, embedding: npt.NDArray[np.float32]) -> int:
    return embedding.nbytes + sys.getsizeof(decision_id) + 112  # the array's own header


def newest_snapshot(registry: PolicyRegistry, base: str, decision_log: DecisionLog) -> VersionInfo | None:
    """The newest online snapshot this log made of ``base`` (None if there is none yet)."""
    mine = [
        v for v in registry.versions() if v.tags.get(TAG_LOG) == decision_log.log_id and v.tags.get(TAG_BASE) == base
    ]
    return max(mine, key=lambda v: int(v.version)) if mine else None


def resolve_start(registry: PolicyRegistry, ref: str, decision_log: DecisionLog) -> Loaded:
    """The policy to serve for ``ref`` (a policy folder, an alias or a version): the newest online snapshot this
    log made of it, else the policy itself."""
    folder = Path(ref)
    base = f"file:{folder.resolve()}" if folder.is_dir() else registry.resolve(ref).version
    newest = newest_snapshot(registry, base, decision_log)
    if newest is not None:
        artifact, info = registry.load(newest.version)
        return Loaded(artifact, info.version, base, info.tags)
    if folder.is_dir():
        return Loaded(PolicyArtifact.load(folder), base, base, {})
    artifact, info = registry.load(base)
    return Loaded(artifact, info.version, base, info.tags)


def start_seq(decision_log: DecisionLog, loaded: Loaded) -> int:
    """Feedback after this sequence number is not in ``loaded`` yet.

    An online snapshot of this log says so in its tags. Any other version is marked in the log the first
    time it is served, so a restart before its first snapshot still replays what came after.
    """
    if loaded.tags.get(TAG_LOG) == decision_log.log_id and TAG_SEQ in loaded.tags:
        return int(loaded.tags[TAG_SEQ])
    return decision_log.mark(f"base:{loaded.version}")
