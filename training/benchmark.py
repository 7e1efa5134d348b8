"""The benchmark protocol (v2): operating points chosen on TRAIN alone, learned from bandit feedback, replayed on TEST.

For every seed, each learned router trains:

* one policy per fold of TRAIN (``folds``, by a hash of ``prompt_id``), on the other folds, whose greedy choices on
  its own fold give an exact, out-of-sample *validation curve* over the whole ``lam`` sweep (TRAIN is a
  full-information benchmark, so the curve is replayed exactly);
* one policy on all of TRAIN, whose greedy choices on TEST are replayed once.

Learned routers:

* ``router_ml`` (the headline, *online*): the policy serves a seeded stream of TRAIN prompts
  (``events_per_prompt`` per prompt), each request with its own cost weight drawn log-uniformly from ``collect``
  (as tenants with different weights share a service), explores, and learns from each graded outcome as it comes;
  it never sees a model it did not pick. It learns quality, so one policy yields the whole ``lam`` sweep.
* ``router_ml_offline``: the same policy learned from the same number of uniformly logged events.

References on the same split, with full information on TRAIN: a per-category table and kNN on embeddings (their
validation curves come from the same folds), every single model, the *single-model hull* (the best random mixture of
two single models at each cost; RouterBench's "zero router") and the hindsight oracle (TEST only, no operating
points).

**Operating points.** For each target (``parity``, ``quality:0.975``, ``budget:10%``, ``budget:25%``, against the
best single model *decided on TRAIN*) and each router, the point is chosen on the seed-averaged validation curve
(:func:`router_ml.operating.choose`: the cheapest point of the upper hull of the router at every ``lam`` and every
single model that meets the target) and then replayed on TEST with each seed's policy learned on all of TRAIN.
Reported per target: TEST quality as a fraction of the best single model's, cost as a fraction of its cost, and
the quality margin over the single-model hull at the cost actually spent; each a mean over seeds with its
standard deviation.

**Frontier numbers** (``q_max``, ``cost_at_parity``, ``cost_at_97_5``, ``auc``; :mod:`router_ml.frontier`) come
from the seed-averaged TEST curve (mean cost and mean quality per ``lam``), never from the best single run.

``lam`` is swept relative to the best single model's cost on TRAIN (``lam_scale``, USD per 1,000 requests): the
sweep is ``0`` and ``relative_lams / lam_scale``, so the same defaults fit any benchmark's prices.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from router_ml.atomic import atomic_write_text
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.embed import Embedder
from router_ml.errors import InvalidInput
from router_ml.features import FeatureConfig, Featurizer
from router_ml.frontier import FrontierSummary, hull_points, hull_quality, summarise
from router_ml.fullinfo import FullInfo
from router_ml.learn import learn_online
from router_ml.operating import Arm, ArmValue, OperatingPoint, Target, choose
from router_ml.policy import Policy, PolicyConfig
from router_ml.references import KnnRouter, oracle, per_category
from router_ml.simulate import simulate
from router_ml.split import hash_fraction
from training.pipelines import catalog_for_benchmark

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
MODES = {"online": "router_ml", "offline": "router_ml_offline"}
DEFAULT_TARGETS = ("parity", "quality:0.975", "budget:10%", "budget:25%")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Protocol settings.

    ``relative_lams``: the sweep in units of ``1 / lam_scale`` (0 is always added). ``collect``: the range of cost
    weights the online stream serves, in the same units. ``events_per_prompt`` x #prompts events per policy.

    ``collect = (0.003, 0.5)`` was chosen by validation inside TRAIN only, on both shared benchmarks, among three
    ranges (``docs/decisions/0002-benchmark-v2.md``).
    """

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    relative_lams: tuple[float, ...] = tuple(np.geomspace(1e-3, 10.0, 80).tolist())
    collect: tuple[float, float] = (0.003, 0.5)
    events_per_prompt: float = 12.0
    seeds: int = 3
    folds: int = 3
    knn_k: int = 100
    modes: tuple[str, ...] = ("online", "offline")
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0
    workers: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.modes) - set(MODES)
        if not self.modes or unknown:
            raise InvalidInput(f"benchmark: 'modes' must be online and/or offline, got {sorted(unknown) or 'none'}")
        if not self.relative_lams or any(not (np.isfinite(x) and x > 0) for x in self.relative_lams):
            raise InvalidInput(f"benchmark: 'lams' must be finite numbers > 0, got {list(self.relative_lams)}")
        low, high = self.collect
        if not (0 < low <= high and np.isfinite(high)):
            raise InvalidInput(f"benchmark: 'collect' must be a range 0 < low <= high, got {self.collect}")
        if not self.events_per_prompt > 0:
            raise InvalidInput(f"benchmark: 'events_per_prompt' must be > 0, got {self.events_per_prompt}")
        if self.seeds < 1 or self.folds < 2:
            raise InvalidInput("benchmark: 'seeds' must be >= 1 and 'folds' >= 2")
        if self.knn_k < 1 or self.workers < 1:
            raise InvalidInput("benchmark: 'knn_k' and 'workers' must be >= 1")
        for t in self.targets:
            Target.parse(t)

    def to_dict(self, embedder: str) -> dict[str, Any]:
        """The settings as the result's ``config`` records them, with the encoder's name."""
        return {
            "policy": asdict(self.policy),
            "features": self.features.to_dict(),
            "relative_lams": list(self.relative_lams),
            "collect": list(self.collect),
            "events_per_prompt": self.events_per_prompt,
            "seeds": self.seeds,
            "folds": self.folds,
            "knn_k": self.knn_k,
            "seed": self.seed,
            "targets": list(self.targets),
            "embedder": embedder,
        }

    @classmethod
    def quick(cls, **overrides: Any) -> BenchmarkConfig:
        """A small protocol for tests and smoke runs: 2 seeds, 2 folds, 3 events per prompt, 24 lams."""
        base: dict[str, Any] = dict(
            relative_lams=tuple(np.geomspace(1e-3, 10.0, 24).tolist()), events_per_prompt=3.0, seeds=2, folds=2
        )
        return cls(**{**base, **overrides})


@dataclass
class _Shared:
    """State the workers read (inherited through fork, never pickled per task)."""

    catalog: Catalog
    train: FullInfo
    test: FullInfo
    train_emb: npt.NDArray[np.float32]
    test_emb: npt.NDArray[np.float32]
    fold: Ints
    lams: list[float]
    config: BenchmarkConfig
    lam_scale: float


_STATE: _Shared | None = None
Task = tuple[str, int, int]
"""(mode, seed, fold); fold -1 is the policy on all of TRAIN, replayed on TEST."""


def _fit_policy(st: _Shared, mode: str, seed: int, rows: Ints) -> Policy:
    """One policy learned from bandit feedback on TRAIN ``rows``."""
    cfg = st.config
    part = st.train.subset(rows)
    emb = st.train_emb[rows]
    featurizer = Featurizer.fit(emb, replace(cfg.features, seed=seed))
    policy = Policy(st.catalog, featurizer, replace(cfg.policy, seed=seed))
    n_events = max(1, round(cfg.events_per_prompt * len(rows)))
    if mode == "online":
        low, high = cfg.collect
        learn_online(policy, part, emb, n_events, lams=(low / st.lam_scale, high / st.lam_scale), seed=seed)
        return policy
    logs = simulate(part, n_events, seed=seed)
    index = {pid: i for i, pid in enumerate(part.prompt_ids)}
    at = np.array([index[p] for p in logs["prompt_id"].to_list()], dtype=np.int64)
    contexts = featurizer.shared(emb)  # once per prompt, not once per event
    tokens = [estimate_tokens(p) for p in part.prompts]
    full = len(part.models)
    for r, model, q, c, p, cands in zip(
        at,
        logs["model"].to_list(),
        logs["quality"].to_numpy(),
        logs["cost_usd"].to_numpy(),
        logs["propensity"].to_numpy(),
        logs["candidates"].to_list(),
    ):
        policy.learn(
            contexts[r], model, q, c, p, None if len(cands) == full else cands, prompt_tokens=tokens[r]
        )
    return policy


def _greedy(policy: Policy, table: FullInfo, emb: npt.NDArray[np.float32], lams: list[float]) -> Ints:
    """Greedy choices ``(len(lams), n)`` on ``table``, per candidate set the benchmark offers."""
    out = np.zeros((len(lams), len(table.prompts)), dtype=np.int64)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(table.offered):
        groups.setdefault(row.tobytes(), []).append(i)
    tokens = np.array([estimate_tokens(p) for p in table.prompts], dtype=np.float64)
    for key, rows in groups.items():
        idx = np.array(rows, dtype=np.int64)
        mask = np.frombuffer(key, dtype=np.bool_)
        cands = None if mask.all() else [m for m, ok in zip(table.models, mask) if ok]
        out[:, idx] = policy.greedy_choices(emb[idx], lams, cands, prompt_tokens=tokens[idx])
    return out


def _run_task(task: Task) -> tuple[Task, Ints, float]:
    """Train one policy and return its greedy choices (on its fold, or on TEST) for every lam."""
    mode, seed, fold = task
    st = _STATE
    assert st is not None
    t0 = time.perf_counter()
    if fold < 0:
        policy = _fit_policy(st, mode, seed, np.arange(len(st.train.prompts), dtype=np.int64))
        choices = _greedy(policy, st.test, st.test_emb, st.lams)
    else:
        policy = _fit_policy(st, mode, seed, np.flatnonzero(st.fold != fold).astype(np.int64))
        held = np.flatnonzero(st.fold == fold).astype(np.int64)
        choices = _greedy(policy, st.train.subset(held), st.train_emb[held], st.lams)
    return task, choices, time.perf_counter() - t0


def _sweep(state: _Shared, progress: bool) -> dict[Task, Ints]:
    """Every (mode, seed, fold) policy, on ``config.workers`` forked processes."""
    global _STATE
    _STATE = state
    cfg = state.config
    tasks = [(m, cfg.seed + s, f) for m in cfg.modes for s in range(cfg.seeds) for f in [*range(cfg.folds), -1]]
    out: dict[Task, Ints] = {}
    bar = tqdm(total=len(tasks), desc="policies", unit="policy", disable=not progress)
    workers = max(1, min(cfg.workers, os.cpu_count() or 1))
    try:
        if workers == 1:
            results: Any = map(_run_task, tasks)
            for task, choices, _ in results:
                out[task] = choices
                bar.update(1)
        else:
            with mp.get_context("fork").Pool(workers) as pool:
                for task, choices, _ in pool.imap_unordered(_run_task, tasks):
                    out[task] = choices
                    bar.update(1)
    finally:
        bar.close()
        _STATE = None
    return out


def _replay(table: FullInfo, choices: Ints) -> tuple[Floats, Floats]:
    """Mean cost (USD) and mean quality per row of ``choices`` (one model index per prompt)."""
    rows = np.arange(choices.shape[-1])
    quality = table.quality[rows, choices]
    if np.isnan(quality).any():
        raise InvalidInput("benchmark: a router chose a model the benchmark lacks for some prompts")
    return table.cost[rows, choices].mean(axis=-1), quality.mean(axis=-1)


@dataclass(frozen=True)
class Curve:
    """A router's points per lam: mean cost (USD per request) and quality, with their spread over seeds."""

    cost: Floats
    quality: Floats
    cost_sd: Floats
    quality_sd: Floats

    @classmethod
    def of(cls, per_seed: Sequence[tuple[Floats, Floats]]) -> Curve:
        """The seed average of per-seed (cost, quality) arrays."""
        costs = np.stack([c for c, _ in per_seed])
        quals = np.stack([q for _, q in per_seed])
        return cls(costs.mean(0), quals.mean(0), costs.std(0), quals.std(0))

    def points(self) -> list[tuple[float, float]]:
        """(cost, quality) pairs."""
        return list(zip(self.cost.tolist(), self.quality.tolist()))


@dataclass(frozen=True)
class OperatingResult:
    """One router at one target: the point chosen on TRAIN and what it did on TEST (mean and sd over seeds)."""

    target: str
    point: OperatingPoint
    met_on_validation: bool
    validation_quality: float
    validation_cost_per_1k: float
    quality: float
    quality_sd: float
    quality_frac: float
    quality_frac_sd: float
    cost_usd: float
    cost_usd_sd: float
    cost_frac: float
    cost_frac_sd: float
    margin_over_hull: float
    margin_over_hull_sd: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["point"] = self.point.to_dict()
        lams = [a.lam for a in self.point.arms if a.lam is not None]
        out["lam"] = lams[0] if len(lams) == 1 else (lams or None)
        return out


@dataclass
class _Router:
    """What the protocol knows of one router: per-arm validation values, and per-seed TEST values per arm."""

    name: str
    validation: dict[Arm, tuple[float, float]]
    test: list[dict[Arm, tuple[float, float]]]
    curve: Curve | None = None

    def validation_points(self) -> list[list[float]]:
        """The out-of-fold (cost, quality) of the router arms on TRAIN, in lam order."""
        return [list(v) for a, v in self.validation.items() if a.lam is not None]


class _Context:
    """The split, the reference model and the singles, shared by every router's operating points."""

    def __init__(self, train: FullInfo, test: FullInfo) -> None:
        self.train, self.test = train, test
        self.train_q = np.nanmean(train.quality, axis=0)
        self.train_c = np.nanmean(train.cost, axis=0)
        self.test_q = np.nanmean(test.quality, axis=0)
        self.test_c = np.nanmean(test.cost, axis=0)
        self.ref = int(np.lexsort((self.train_c, -self.train_q))[0])
        self.singles_val = {
            Arm(model=m): (float(self.train_c[j]), float(self.train_q[j])) for j, m in enumerate(train.models)
        }
        self.singles_test = {
            Arm(model=m): (float(self.test_c[j]), float(self.test_q[j])) for j, m in enumerate(test.models)
        }
        self.test_singles = list(zip(self.test_c.tolist(), self.test_q.tolist()))

    def operating(self, router: _Router, target: str) -> OperatingResult:
        """Choose on validation, replay on TEST with every seed."""
        t = Target.parse(target)
        goal = t.goal(float(self.train_q[self.ref]), float(self.train_c[self.ref]) * 1000.0)
        values = [ArmValue(a, q, c * 1000.0) for a, (c, q) in {**self.singles_val, **router.validation}.items()]
        chosen = choose(values, t.kind, goal)
        per_seed = []
        for test in router.test:
            by_arm = {**self.singles_test, **test}
            cost = sum(w * by_arm[a][0] for a, w in zip(chosen.point.arms, chosen.point.weights))
            quality = sum(w * by_arm[a][1] for a, w in zip(chosen.point.arms, chosen.point.weights))
            per_seed.append((cost, quality, quality - hull_quality(self.test_singles, cost)))
        arr = np.array(per_seed)
        q_ref, c_ref = float(self.test_q[self.ref]), float(self.test_c[self.ref])
        return OperatingResult(
            target=t.label,
            point=chosen.point,
            met_on_validation=chosen.met,
            validation_quality=chosen.quality,
            validation_cost_per_1k=chosen.cost_per_1k,
            quality=float(arr[:, 1].mean()),
            quality_sd=float(arr[:, 1].std()),
            quality_frac=float(arr[:, 1].mean() / q_ref),
            quality_frac_sd=float(arr[:, 1].std() / q_ref),
            cost_usd=float(arr[:, 0].mean()),
            cost_usd_sd=float(arr[:, 0].std()),
            cost_frac=float(arr[:, 0].mean() / c_ref),
            cost_frac_sd=float(arr[:, 0].std() / c_ref),
            margin_over_hull=float(arr[:, 2].mean()),
            margin_over_hull_sd=float(arr[:, 2].std()),
        )


def _learned_routers(swept: dict[Task, Ints], state: _Shared, ctx: _Context) -> list[_Router]:
    """Validation and TEST values of the learned routers from their fold and final policies."""
    cfg = state.config
    arms = [Arm(lam=lam) for lam in state.lams]
    out = []
    for mode in cfg.modes:
        val_curves, test_curves = [], []
        for s in range(cfg.seeds):
            seed = cfg.seed + s
            choices = np.zeros((len(state.lams), len(state.train.prompts)), dtype=np.int64)
            for f in range(cfg.folds):
                choices[:, state.fold == f] = swept[(mode, seed, f)]
            val_curves.append(_replay(state.train, choices))
            test_curves.append(_replay(state.test, swept[(mode, seed, -1)]))
        val = Curve.of(val_curves)
        tests = [{a: (float(c[i]), float(q[i])) for i, a in enumerate(arms)} for c, q in test_curves]
        validation = {a: (float(val.cost[i]), float(val.quality[i])) for i, a in enumerate(arms)}
        out.append(_Router(MODES[mode], validation, tests, Curve.of(test_curves)))
    return out


def _reference_routers(state: _Shared, knn_k: int) -> list[_Router]:
    """The per-category table and kNN: validation from the folds, TEST from all of TRAIN (no seeds)."""
    arms = [Arm(lam=lam) for lam in state.lams]
    train, test, fold = state.train, state.test, state.fold

    def per_cat(tr: FullInfo, te: FullInfo, _: Any, __: Any) -> Ints:
        return np.stack([per_category(tr, te, lam) for lam in state.lams])

    def knn(tr: FullInfo, te: FullInfo, tr_emb: npt.NDArray[np.float32], te_emb: npt.NDArray[np.float32]) -> Ints:
        model = KnnRouter(tr, tr_emb, te_emb, k=knn_k)
        return np.stack([model.choose(lam) for lam in state.lams])

    out = []
    for name, rule in (("per_category", per_cat), (f"knn{knn_k}", knn)):
        choices = np.zeros((len(state.lams), len(train.prompts)), dtype=np.int64)
        for f in range(state.config.folds):
            inside, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            choices[:, held] = rule(
                train.subset(inside), train.subset(held), state.train_emb[inside], state.train_emb[held]
            )
        vc, vq = _replay(train, choices)
        tc, tq = _replay(test, rule(train, test, state.train_emb, state.test_emb))
        out.append(
            _Router(
                name,
                {a: (float(vc[i]), float(vq[i])) for i, a in enumerate(arms)},
                [{a: (float(tc[i]), float(tq[i])) for i, a in enumerate(arms)}],
                Curve.of([(tc, tq)]),
            )
        )
    return out


@dataclass(frozen=True)
class RouterCurve:
    """One router's TEST curve (mean cost in USD and quality per ``lam``, seed-averaged), its spread over seeds and
    its out-of-fold validation curve on TRAIN (learned routers and references only), and its four numbers."""

    points: list[tuple[float, float]]
    summary: FrontierSummary
    points_sd: list[list[float]] | None = None
    validation_points: list[list[float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``points``, ``q_max``, ``cost_at_parity``, ``cost_at_97_5``, ``auc`` and, where known,
        ``points_sd`` and ``validation_points``."""
        out: dict[str, Any] = {"points": [list(p) for p in self.points], **self.summary.to_dict()}
        if self.points_sd is not None:
            out["points_sd"] = self.points_sd
        if self.validation_points is not None:
            out["validation_points"] = self.validation_points
        return out


@dataclass(frozen=True)
class BenchmarkResult:
    """What the protocol found (the JSON schema is ``docs/decisions/0002-benchmark-v2.md``'s): the best single
    model (decided on TRAIN, measured on TEST), the ``lam`` sweep, every router's curve, every router's operating
    point per target, the settings and the timings."""

    best_model: str
    best_quality: float
    best_cost: float
    lams: list[float]
    lam_scale: float
    config: dict[str, Any]
    routers: dict[str, RouterCurve]
    operating_points: dict[str, dict[str, OperatingResult]]
    n_train_prompts: int
    n_test_prompts: int
    embed_seconds: float
    learn_seconds: float
    seconds: float

    PROTOCOL = 2

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``router-ml benchmark --json`` writes."""
        routers = {name: curve.to_dict() for name, curve in self.routers.items()}
        return {
            "protocol": self.PROTOCOL,
            "best_single": {
                "model": self.best_model,
                "quality": self.best_quality,
                "cost": self.best_cost,
                "decided_on": "train",
            },
            "lams": self.lams,
            "lam_scale": self.lam_scale,
            "config": self.config,
            "routers": routers,
            "router_ml": routers.get("router_ml"),
            "operating_points": {
                name: {t: op.to_dict() for t, op in targets.items()} for name, targets in self.operating_points.items()
            },
            "n_train_prompts": self.n_train_prompts,
            "n_test_prompts": self.n_test_prompts,
            "embed_seconds": self.embed_seconds,
            "learn_seconds": self.learn_seconds,
            "seconds": self.seconds,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)


def run_benchmark(
    train_path: Path,
    test_path: Path,
    config: BenchmarkConfig,
    embedder: Embedder,
    *,
    catalog_path: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BenchmarkResult:
    """Run the whole protocol: learn every policy, replay, choose the operating points, summarise."""
    t0 = time.perf_counter()
    train_df, test_df = load_benchmark(train_path), load_benchmark(test_path)
    catalog = catalog_for_benchmark(train_path, train_df, catalog_path)
    train = FullInfo.from_benchmark(train_df, models=catalog.names)
    test = FullInfo.from_benchmark(test_df, models=catalog.names)
    if len(train.prompts) < config.folds * 10:
        raise InvalidInput(f"benchmark: TRAIN has {len(train.prompts)} prompts, too few for {config.folds} folds")
    log(f"TRAIN {len(train.prompts)} prompts, TEST {len(test.prompts)} prompts, {len(catalog)} models")
    train_emb = embedder.encode(train.prompts, progress=progress)
    test_emb = embedder.encode(test.prompts, progress=progress)
    t_embed = time.perf_counter() - t0
    ctx = _Context(train, test)
    lam_scale = float(ctx.train_c[ctx.ref]) * 1000.0
    lams = [0.0, *(x / lam_scale for x in config.relative_lams)]
    fold = np.array([int(hash_fraction(p, "fold") * config.folds) for p in train.prompt_ids], dtype=np.int64)
    state = _Shared(catalog, train, test, train_emb, test_emb, fold, lams, config, lam_scale)
    t1 = time.perf_counter()
    swept = _sweep(state, progress)
    t_learn = time.perf_counter() - t1
    routers = [*_learned_routers(swept, state, ctx), *_reference_routers(state, config.knn_k)]
    return BenchmarkResult(
        best_model=catalog.names[ctx.ref],
        best_quality=float(ctx.test_q[ctx.ref]),
        best_cost=float(ctx.test_c[ctx.ref]),
        lams=lams,
        lam_scale=lam_scale,
        config=config.to_dict(embedder.name),
        routers=_curves(routers, ctx, state),
        operating_points={
            r.name: {t: ctx.operating(r, t) for t in config.targets}
            for r in [*routers, _Router("single_model_hull", {}, [{}])]
        },
        n_train_prompts=len(train.prompts),
        n_test_prompts=len(test.prompts),
        embed_seconds=t_embed,
        learn_seconds=t_learn,
        seconds=time.perf_counter() - t0,
    )


def _curves(routers: list[_Router], ctx: _Context, state: _Shared) -> dict[str, RouterCurve]:
    """Every router's TEST curve with its four numbers: the learned routers and references, each single model, the
    single-model hull and the hindsight oracle."""
    best_q, best_c = float(ctx.test_q[ctx.ref]), float(ctx.test_c[ctx.ref])

    def curve(points: list[tuple[float, float]], **extra: Any) -> RouterCurve:
        return RouterCurve(points, summarise(points, best_q, best_c), **extra)

    out: dict[str, RouterCurve] = {}
    for r in routers:
        assert r.curve is not None
        sd = [list(p) for p in zip(r.curve.cost_sd.tolist(), r.curve.quality_sd.tolist())]
        out[r.name] = curve(r.curve.points(), points_sd=sd, validation_points=r.validation_points())
    for j, m in enumerate(state.catalog.names):
        out[f"single:{m}"] = curve([(float(ctx.test_c[j]), float(ctx.test_q[j]))])
    out["single_model_hull"] = curve(hull_points(ctx.test_singles))
    orc = np.stack([oracle(state.test, lam) for lam in state.lams])
    out["oracle"] = curve(list(zip(*(a.tolist() for a in _replay(state.test, orc)))))
    return out


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def format_table(benchmark: BenchmarkResult) -> str:
    """The operating points of every router, then the four frontier numbers (singles: only the five best)."""
    result = benchmark.to_dict()
    best = result["best_single"]
    lines = [
        f"best single model (decided on TRAIN): {best['model']}, on TEST quality {best['quality']:.4f} "
        f"at ${best['cost'] * 1000:.4f} per 1k requests",
        f"operating points chosen on TRAIN, replayed on TEST (mean ± sd over {result['config']['seeds']} seeds):",
        "",
        f"{'router':<22} {'target':<15} {'quality frac':>16} {'cost frac':>16} {'margin vs hull':>18}  point",
    ]
    for name, targets in result["operating_points"].items():
        for label, op in targets.items():
            mark = "" if op["met_on_validation"] else "  (target not met on validation)"
            lines.append(
                f"{name:<22} {label:<15} {op['quality_frac']:>9.3f} ± {op['quality_frac_sd']:.3f}"
                f" {op['cost_frac']:>9.3f} ± {op['cost_frac_sd']:.3f}"
                f" {op['margin_over_hull']:>+10.4f} ± {op['margin_over_hull_sd']:.4f}  {op['point']['label']}{mark}"
            )
    lines += ["", "frontiers on TEST (seed-averaged curves):", ""]
    lines.append(f"{'router':<32} {'q_max':>7} {'cost@parity':>12} {'cost@97.5%':>11} {'auc':>7}")
    singles = sorted(
        (k for k in result["routers"] if k.startswith("single:")), key=lambda k: -result["routers"][k]["q_max"]
    )
    names = [k for k in result["routers"] if not k.startswith("single:")] + singles[:5]
    for name in names:
        r = result["routers"][name]
        lines.append(
            f"{name:<32} {r['q_max']:>7.4f} {_fmt(r['cost_at_parity']):>12} {_fmt(r['cost_at_97_5']):>11}"
            f" {r['auc']:>7.4f}"
        )
    return "\n".join(lines)


def write_outputs(result: BenchmarkResult, json_path: Path, plot_path: Path | None) -> None:
    """The JSON file, and the frontier plot if asked."""
    atomic_write_text(json_path, result.to_json())
    if plot_path is not None:
        from router_ml.plots import frontier_plot

        frontier_plot(result.to_dict(), plot_path)
