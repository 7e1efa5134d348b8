"""Starting the service: open the decision log (and claim its learner lock), load the policy and catch up on the log,
connect the upstreams. Any failure is one line naming the step (:class:`StartupError`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import httpx

from router_ml.budget import DualLambda, QualityFloor
from router_ml.decision_log import DecisionLog
from router_ml.errors import UserError
from router_ml.log_store import redact
from router_ml.registry import PolicyRef, PolicyRegistry
from router_ml.router import Router
from router_ml.savings import LiveSavings
from serve.auth import Keys
from serve.config import ConfigError, ServeConfig
from serve.grading import Grading
from serve.judge import make_grader
from serve.learner import Loaded, OnlineLearner, resolve_start, routing
from serve.metrics import Metrics
from serve.service import Role, Service
from serve.upstream import Forwarder, Upstream, resolve_upstreams

log = logging.getLogger("router_ml.serve")


class StartupError(UserError):
    """The service cannot start; the message is one line saying what failed."""


@contextlib.contextmanager
def _starting(step: str) -> Iterator[None]:
    """Turn any failure of a start-up step into one line naming the step (configuration errors pass as they are)."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StartupError(f"serve: cannot start: {step}: {detail}") from exc


def build_service(
    config: ServeConfig, *, transport: httpx.AsyncBaseTransport | None = None, role: Role = "all"
) -> Service:
    """Load the policy (catching up on the log), connect the log and the upstreams.

    ``role`` ``all`` (the default) decides and learns, and holds the log's learner lock; ``router`` decides, commits
    grades and serves the newest snapshot of the log's single learner (``router-ml learn --follow``)."""
    keys = Keys(config)
    releases = contextlib.ExitStack()
    decision_log = open_log(config)
    if role == "all":
        _claim_learning(decision_log, releases)
    with _starting(f"policy '{config.policy.ref}'"):
        learner, loaded = load_learner(config, decision_log, tenants=keys.tenants, learns=role == "all")
    with _starting("replaying the decision log"):
        caught_up = learner.start(loaded)
    if caught_up:
        log.info("learned %d feedback rows committed after version %s", caught_up, loaded.version)
    upstreams = resolve_upstreams(learner.router.policy.catalog, config.upstream)
    forwarder = Forwarder(upstreams, config.upstream, transport=transport)
    target = config.budget.target_usd_per_1k
    budget = DualLambda(target, config.budget.step) if target is not None else None
    grading = start_grading(config, learner, decision_log, upstreams, budget, sole=role == "all")
    t = config.target
    floor = (
        QualityFloor(t.quality_floor, t.floor_step, t.floor_min_graded, t.floor_every)
        if t.quality_floor is not None
        else None
    )
    return Service(
        config, learner, decision_log, forwarder, learner.metrics, budget, keys, floor, role, grading, releases
    )


def start_grading(
    config: ServeConfig,
    learner: OnlineLearner,
    decision_log: DecisionLog,
    upstreams: dict[str, Upstream],
    budget: DualLambda | None,
    *,
    sole: bool,
) -> Grading | None:
    """The background grading ``[grader]`` asks for (None without a ``kind``), picking up the log's pending jobs
    (``sole``: this process is the only one grading, so claims left by a killed one are void now)."""
    catalog = learner.router.policy.catalog
    grader = make_grader(config.grader, catalog, upstreams)
    if grader is None:
        return None
    judge = catalog.spec(config.grader.judge_model) if config.grader.kind == "judge" else None
    grading = Grading(
        config.grader, grader, decision_log, learner, learner.metrics, budget, judge, seed=config.learning.seed
    )
    with _starting("grade jobs"):
        grading.start(decision_log.counts()["decisions"], sum(decision_log.grading_spend().values()), release=sole)
    return grading


def _claim_learning(decision_log: DecisionLog, releases: contextlib.ExitStack) -> None:
    """Take the log's learner lock (held until ``releases`` closes) and mark answers cut by a previous stop."""
    with _starting(f"decision log {decision_log.where}"):
        sole_learner = releases.enter_context(decision_log.store.learner_lock())
    if not sole_learner:
        raise StartupError(
            f"serve: cannot start: decision log {decision_log.where}: another process learns from it "
            "(a service or router-ml learn); start replicas with --role router"
        )
    with _starting(f"decision log {decision_log.where}"):
        decision_log.interrupted()


def load_learner(
    config: ServeConfig, decision_log: DecisionLog, *, tenants: Sequence[str] = (), learns: bool = True
) -> tuple[OnlineLearner, Loaded]:
    """The configured policy, loaded where the log says to start from (:func:`~serve.learner.resolve_start`), in a
    learner with its metrics (labelled by ``tenants``) and live savings; shared by the service and ``router-ml learn``.
    """
    registry = PolicyRegistry(config.policy.tracking_uri or None)
    ref = PolicyRef.parse(config.policy.ref)
    loaded = resolve_start(registry, ref, decision_log)
    router = routing(loaded.artifact, loaded.version)
    learner = OnlineLearner(
        loaded,
        router,
        decision_log,
        registry,
        config.learning,
        Metrics(tenants=tenants, models=router.policy.catalog.names),
        alias=ref.alias,
        savings=LiveSavings(reference_model(config, router), alpha=1 - config.savings.level),
        learns=learns,
    )
    return learner, loaded


def reference_model(config: ServeConfig, router: Router) -> str:
    """The model the live savings estimate compares with: ``savings.reference``, else a day-one policy's default
    model, else the catalog's dearest."""
    catalog = router.policy.catalog
    prior = router.policy.prior.default if router.policy.prior is not None else None
    reference = config.savings.reference or prior or max(catalog.models, key=lambda m: m.blended_usd_per_mtok).name
    if reference not in catalog:
        raise ConfigError(f"config: 'savings.reference' {reference!r} is not in the policy's catalog")
    return reference


def open_log(config: ServeConfig) -> DecisionLog:
    """The configured decision log; a fault is one line naming it (a URL without its password)."""
    location = config.log.location()
    with _starting(f"decision log {redact(location)}"):
        return DecisionLog(location, config.log.durability, busy_timeout=config.log.busy_timeout_seconds)
