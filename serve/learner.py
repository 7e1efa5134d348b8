"""The online learner: the single owner of the policy, which decides, learns, snapshots and reloads.

Every touch of the VW model runs on one thread (``policy`` executor), so decisions and updates never
overlap. MLflow work (snapshots, alias polling, loading a new champion) runs on a second thread
(``registry`` executor) and hands results to the policy thread. The policy thread never embeds: a decision's
embedding comes from the request thread, a grade's from the memo kept since its decision (or, when the memo has
let it go, from the request thread that brings the grade), and a replay's from the thread that asked for it.

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
(:mod:`serve.follow`, ``router-ml learn --follow``) reads the grades from the log in sequence order
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

from router_ml import mlflow_schema
from router_ml.artifacts import PolicyArtifact
from router_ml.bounded import ByteLRU
from router_ml.cost_model import estimate_tokens
from router_ml.decision_log import CostBound, DecisionLog, GradedDecision, GradeSource
from router_ml.embed import MemoryCache
from router_ml.operating import OperatingPoint
from router_ml.policy import Decision
from router_ml.registry import PolicyRef, PolicyRegistry, VersionInfo, load_policy
from router_ml.router import Router
from router_ml.savings import LiveSavings
from serve.config import LearningConfig
from serve.metrics import Metrics

log = logging.getLogger("router_ml.serve")
T = TypeVar("T")

MEMO_BYTES = 32 << 20
"""Bound of the embeddings kept between a decision and its feedback (about 20,000 of MiniLM's 384 floats); the
least recently decided leave first, and their feedback embeds the prompt again."""
ROUTE_MEMO_BYTES = 16 << 20
"""Bound of the recently routed prompts' embeddings (about 10,000): a prompt routed again is not embedded again."""


def routing(artifact: PolicyArtifact, version: str) -> Router:
    """The router that serves ``artifact``: its policy and its embedder, behind a memo of recent prompts."""
    return Router.from_artifact(artifact, version=version, cache=MemoryCache(ROUTE_MEMO_BYTES))

Embedding = npt.NDArray[np.float32]
Embedded = tuple[Embedding, str]
"""A prompt's embedding and the name of the encoder that made it."""


@dataclass(frozen=True)
class Loaded:
    """A policy as the service starts it: the artifact, its version label, the version it descends from (the
    ``base``), and its tags."""

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
        self._memo: ByteLRU[str, Embedded] = ByteLRU(MEMO_BYTES, _memo_bytes)
        self._memo_lock = threading.Lock()  # the policy thread puts, request threads take
        self._embedding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
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
            with self._memo_lock:
                self._memo.put(decision_id, (embedding, self.router.embedder.name))
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
        source: GradeSource = "client",
        grader: str | None = None,
        grading_cost_usd: float = 0.0,
    ) -> GradedDecision:
        """Commit feedback to the log and queue the update (call from a worker thread, not the event loop).
        A client's grade and a grader's (``source``, ``grader``: :mod:`serve.grading`) take this one path.

        The commit and the queueing happen under one lock, so updates reach the policy thread in sequence
        order. ``tenant`` and ``cost_bound`` are checked by :meth:`DecisionLog.record_feedback`. The update goes
        with its prompt's embedding: the memo's, or (when the memo let it go) computed here, on this thread.
        """
        with self._seq_lock:
            graded = self.log.record_feedback(
                decision_id,
                quality,
                cost_usd,
                tenant=tenant,
                cost_bound=cost_bound,
                source=source,
                grader=grader,
                grading_cost_usd=grading_cost_usd,
            )
            with self._memo_lock:
                embedded = self._memo.pop(decision_id)
            if not self.learns:  # a router replica only commits: the learner reads the grade from the log
                return graded
            if embedded is None and graded.learnable:
                embedded = _embed(self.router, graded.prompt)
            self._policy.submit(self._learn, graded, embedded)
        return graded

    def _learn(self, graded: GradedDecision, embedded: Embedded | None) -> bool:
        """On the policy thread: learn one feedback (``embedded`` is its prompt's embedding) unless the model holds
        it already. True if learned."""
        if graded.seq <= self._seq:
            return False
        try:
            if graded.learnable:
                embedding = self._current(embedded, graded.prompt)
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

    def _current(self, embedded: Embedded | None, prompt: str) -> Embedding:
        """On the policy thread: ``embedded``'s vector if the serving encoder made it; else (a reload changed the
        encoder after the grade was queued) the prompt embedded again on the ``embed`` thread, waited for."""
        if embedded is not None and embedded[1] == self.router.embedder.name:
            return embedded[0]
        return self._embedding.submit(self.router.embed, prompt).result()

    def embedded_since(self, after_seq: int, router: Router) -> tuple[dict[int, Embedded], int]:
        """Off the policy thread: the embedding (by ``router``) of every learnable grade the log has after
        ``after_seq``, by sequence number, and the last sequence number read."""
        learnable: list[GradedDecision] = []
        last = after_seq
        for graded in self.log.graded_since(after_seq):
            if graded.learnable:
                learnable.append(graded)
            last = graded.seq
        if not learnable:
            return {}, last
        vectors = np.asarray(router.embedder.encode([g.prompt for g in learnable]), dtype=np.float32)
        return {g.seq: (vector, router.embedder.name) for g, vector in zip(learnable, vectors)}, last

    def _pending(self, after_seq: int, embedded: dict[int, Embedded]) -> list[GradedDecision] | None:
        """The log's grades after ``after_seq``, or None when a learnable one lacks its embedding in ``embedded``."""
        pending = list(self.log.graded_since(after_seq))
        return None if any(g.learnable and g.seq not in embedded for g in pending) else pending

    def _catch_up(self, after_seq: int, pending: list[GradedDecision], embedded: dict[int, Embedded]) -> int:
        """On the policy thread: the model holds feedback up to ``after_seq``; learn ``pending`` (what the log has
        after it). Returns how many feedback rows were taken in."""
        self._seq = after_seq
        return sum(self._learn(graded, embedded.get(graded.seq)) for graded in pending)

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
        frozen = PolicyArtifact(policy=policy.copy(), embedder=self._artifact.embedder, parent_version=self._version)
        tags = mlflow_schema.online_tags(self._version, self._base, self.log.log_id, self._seq)
        updates = policy.updates
        self._snapshotting = True
        self._last_snapshot = time.monotonic()

        def register() -> None:
            try:
                info = self.registry.log_version(
                    frozen,
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
        self._load(resolve_start(self.registry, PolicyRef("alias", self.alias), self.log))
        return True

    def _load(self, loaded: Loaded) -> None:
        """On a worker thread: build the router of ``loaded`` (reusing the embedder when it is the same) and swap it
        in on the policy thread, between two decisions; one that learns first catches up on the log."""
        same_embedder = loaded.artifact.embedder == self._artifact.embedder
        router = (
            Router(loaded.artifact.policy, self.router.embedder, loaded.version)
            if same_embedder
            else routing(loaded.artifact, loaded.version)
        )
        if self.learns:
            self._replay(start_seq(self.log, loaded), router, lambda embedded: self._swap(loaded, router, embedded))
        else:  # a replica serves the snapshot as published: its learner learns what came after
            self._policy.submit(self._install, loaded, router).result()
        self.metrics.reloads.inc()

    def _replay(self, after: int, router: Router, step: Callable[[dict[int, Embedded]], int | None]) -> int:
        """Run ``step`` on the policy thread with the embeddings (by ``router``) of every grade after sequence
        number ``after``, computed here; grades that arrive meanwhile are embedded here too, and ``step`` asked
        again."""
        embedded, last = self.embedded_since(after, router)
        while True:
            done = self._policy.submit(step, embedded).result()
            if done is not None:
                return done
            more, last = self.embedded_since(last, router)
            embedded |= more

    def _swap(self, loaded: Loaded, router: Router, embedded: dict[int, Embedded]) -> int | None:
        """On the policy thread: serve ``router`` from now on, caught up on the log (None, and no swap, when a
        grade came in that ``embedded`` lacks)."""
        after = start_seq(self.log, loaded)
        pending = self._pending(after, embedded)
        if pending is None:
            return None
        self._install(loaded, router)
        return self._catch_up(after, pending, embedded)

    def _install(self, loaded: Loaded, router: Router) -> None:
        """On the policy thread: serve ``router`` from now on."""
        _serving(router)
        self.router, self._artifact = router, loaded.artifact
        self._version, self._base = loaded.version, loaded.base_version
        self._updates_at_version = router.policy.updates
        with self._memo_lock:
            self._memo.clear()

    def refresh(self) -> bool:
        """On a worker thread, for a router replica: count the grades committed since the last call into the savings
        estimate, and serve the newest snapshot the learner published of the same base version. True if swapped."""
        self._policy.submit(self._count_new_grades).result()
        newest = newest_snapshot(self.registry, self._base, self.log)
        if newest is None or newest.version == self._version:
            return False
        artifact, info = self.registry.load(PolicyRef("version", newest.version))
        self._load(Loaded(artifact, info.version, self._base, info.tags))
        return True

    def _count_new_grades(self) -> None:
        for graded in self.log.graded_since(self._savings_seq):
            self._count_savings(graded)

    def follow_once(self) -> int:
        """For the learner: learn the grades committed after the model's high-water mark, in sequence order
        (embedded on this thread, learned on the policy thread). Returns how many were taken in."""
        after = self._seq  # only the policy thread moves it, and only this caller feeds the learner process
        return self._replay(after, self.router, lambda embedded: self._follow(after, embedded))

    def _follow(self, after: int, embedded: dict[int, Embedded]) -> int | None:
        pending = self._pending(after, embedded)
        return None if pending is None else self._catch_up(after, pending, embedded)

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

        def run(embedded: dict[int, Embedded]) -> int | None:
            after = start_seq(self.log, loaded)
            pending = self._pending(after, embedded)
            if pending is None:
                return None
            for graded in self.log.graded_since(0):
                if graded.seq > after:
                    break
                self._count_savings(graded)
            return self._catch_up(after, pending, embedded)

        return self._replay(start_seq(self.log, loaded), self.router, run)

    def close(self) -> None:
        """Finish queued updates and registry work: the updates first (one may start a snapshot), then the
        registrations (each reports its version back to the policy thread), then the policy thread."""
        self._policy.submit(lambda: None).result()
        self._registry.shutdown(wait=True)
        self._policy.shutdown(wait=True)
        self._embedding.shutdown(wait=True)


def _serving(router: Router) -> None:
    """A service never decides twice on one context object, so its policy keeps no VW shared examples."""
    router.policy.shared_cache.max_bytes = 0


def _embed(router: Router, prompt: str) -> Embedded:
    return router.embed(prompt), router.embedder.name


def _memo_bytes(decision_id: str, embedded: Embedded) -> int:
    return embedded[0].nbytes + sys.getsizeof(decision_id) + 112  # the array's own header (the name is shared)


def newest_snapshot(registry: PolicyRegistry, base: str, decision_log: DecisionLog) -> VersionInfo | None:
    """The newest online snapshot this log made of ``base`` (None if there is none yet)."""
    return registry.newest({mlflow_schema.TAG_LOG: decision_log.log_id, mlflow_schema.TAG_BASE: base})


def resolve_start(registry: PolicyRegistry, ref: PolicyRef, decision_log: DecisionLog) -> Loaded:
    """The policy to serve for ``ref``: the newest online snapshot this log made of it, else the policy itself."""
    base = f"file:{Path(ref.value).resolve()}" if ref.kind == "folder" else registry.resolve(ref).version
    newest = newest_snapshot(registry, base, decision_log)
    found = load_policy(newest.version if newest else ref if ref.kind == "folder" else base, registry)
    if found.version is None:
        return Loaded(found.artifact, base, base, {})
    return Loaded(found.artifact, found.version.version, base, found.version.tags)


def start_seq(decision_log: DecisionLog, loaded: Loaded) -> int:
    """Feedback after this sequence number is not in ``loaded`` yet.

    An online snapshot of this log says so in its tags. Any other version is marked in the log the first
    time it is served, so a restart before its first snapshot still replays what came after.
    """
    if loaded.tags.get(mlflow_schema.TAG_LOG) == decision_log.log_id and mlflow_schema.TAG_SEQ in loaded.tags:
        return int(loaded.tags[mlflow_schema.TAG_SEQ])
    return decision_log.mark(f"base:{loaded.version}")
