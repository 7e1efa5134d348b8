"""The training side's subcommands of ``router-ml``: simulate, split, embed, init, train, demo, benchmark, evaluate,
promote.

Each parses its flags (the shared ones come from :mod:`router_ml.cli`), calls one job of this package and prints
what it did.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router_ml import settings
from router_ml.calibrate import DEFAULT_CONFIDENCE, DEFAULT_FOLDS
from router_ml.cli import (
    Command,
    configs,
    embedder_flags,
    embedder_run_flags,
    embedder_spec,
    floats,
    policy_flags,
    tracking_flag,
)
from router_ml.embed import Embedder
from router_ml.encoders import Embedders
from router_ml.errors import InvalidInput
from router_ml.operating import Target
from router_ml.registry import PolicyRegistry
from router_ml.simulate import EpsilonGreedy
from router_ml.split import TEST_FRACTION
from training.benchmark import BenchmarkConfig
from training.demo import DEMO_EVENTS_PER_PROMPT

if TYPE_CHECKING:  # the jobs load on demand; the names only type a helper
    from training.day_one import InitOutcome
    from training.pipelines import TrainOutcome


def _embedders(args: argparse.Namespace) -> Embedders:
    """Encoders with the flags' threads and batch size, behind the on-disk cache."""
    return Embedders(threads=args.threads, batch_size=args.batch_size, cache_path=settings.embedding_cache_path())


def _embedder(args: argparse.Namespace) -> Embedder:
    """The encoder the flags name, behind the on-disk cache."""
    return _embedders(args).get(embedder_spec(args))


def _ray_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ray (batch embedding; needs pip install 'router-ml[scale]')")
    g.add_argument(
        "--ray",
        default=None,
        help="embed on Ray: 'auto' starts a local Ray with this machine's cores, else the address of a cluster",
    )
    g.add_argument("--workers", type=int, default=None, help="Ray embedding actors (default: the cluster's CPUs)")


def _fill_cache(args: argparse.Namespace, paths: list[Path]) -> None:
    """Embed every prompt of ``paths`` into the on-disk cache (on Ray if ``--ray``), and say what it did."""
    from router_ml.batch_embed import embed_files

    spec = embedder_spec(args)
    report = embed_files(
        paths, spec, settings.embedding_cache_path(), threads=args.threads, ray=args.ray, workers=args.workers
    )
    print(report.format())


def _target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target (calibration on the logs)")
    g.add_argument(
        "--target",
        default=None,
        help="parity[:MODEL], quality:FRACTION[:MODEL], budget:USD_PER_1K or budget:PCT%%[:MODEL]; the operating "
        "point is chosen by doubly robust estimates on held-out folds of the logs (default: parity with the best "
        "model in the logs, unless --lam is given)",
    )
    g.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"calibration folds (default {DEFAULT_FOLDS})")
    g.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help=f"one-sided confidence a quality target is met with (default {DEFAULT_CONFIDENCE}: on the point "
        "estimate)",
    )


def _target(args: argparse.Namespace) -> Target | None:
    """The calibration target: --target, else parity unless a fixed --lam was asked for."""
    if args.target is not None:
        return Target.parse(args.target)
    return None if args.lam is not None else Target.parse("parity")


# -- simulate, split --------------------------------------------------------------------------------
def _simulate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logging", choices=["uniform", "epsilon-greedy"], default="uniform")
    p.add_argument("--greedy-model", default=None, help="the fixed model of --logging epsilon-greedy")
    p.add_argument("--epsilon", type=float, default=EpsilonGreedy.epsilon)
    p.add_argument("-o", "--out", type=Path, required=True)


def _simulate(args: argparse.Namespace) -> None:
    from training import pipelines

    logging = pipelines.logging_policy(args.logging, args.greedy_model, args.epsilon)
    logs = pipelines.run_simulate(args.benchmark, args.events, args.seed, args.out, logging)
    print(f"wrote {logs.height} events ({logging.name}) to {args.out}")


def _split_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    p.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    p.add_argument("--salt", default="", help="changes which prompts land in TEST")
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--test-out", type=Path, required=True)


def _split(args: argparse.Namespace) -> None:
    from training.pipelines import run_split

    n_train, n_test = run_split(args.benchmark, args.test_fraction, args.salt, args.train_out, args.test_out)
    print(f"TRAIN {n_train} prompts -> {args.train_out}\nTEST {n_test} prompts -> {args.test_out}")


# -- embed, train, demo ------------------------------------------------------------------------------
def _embed_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logs", type=Path, nargs="+", required=True, help="Parquet files with a 'prompt' column")
    _ray_flags(p)
    e = p.add_argument_group("embedder")
    embedder_flags(e)
    embedder_run_flags(e)


def _embed(args: argparse.Namespace) -> None:
    _fill_cache(args, args.logs)


def _init_flags(p: argparse.ArgumentParser) -> None:
    from router_ml.day_one import DEFAULT_CONFIDENCE as RULE_CONFIDENCE
    from router_ml.day_one import DEFAULT_EXPLORE_SHARE, DEFAULT_MIN_GRADED

    p.add_argument("--catalog", type=Path, required=True, help="your models and their prices (TOML, >= 2 models)")
    p.add_argument(
        "--default", default=None, help="the model served first, the rest explored (default: the catalog's dearest)"
    )
    p.add_argument(
        "--explore-share",
        type=float,
        default=DEFAULT_EXPLORE_SHARE,
        help=f"the most of each request's probability exploration may take (default {DEFAULT_EXPLORE_SHARE:g})",
    )
    p.add_argument(
        "--explore-budget-usd-per-1k",
        type=float,
        default=None,
        help="the most exploration may cost, in USD per 1,000 requests (expected, per request; default: no cap)",
    )
    p.add_argument(
        "--target",
        default=None,
        help="parity or quality:FRACTION: the router must also show that much of the default's quality before it "
        "takes traffic from it (with --confidence)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=RULE_CONFIDENCE,
        help=f"one-sided confidence of the rule that moves traffic from the default (default {RULE_CONFIDENCE:g})",
    )
    p.add_argument(
        "--min-graded",
        type=int,
        default=DEFAULT_MIN_GRADED,
        help=f"graded decisions before the rule may act (default {DEFAULT_MIN_GRADED})",
    )
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="optional sample prompts (Parquet 'prompt' column, or a text file, one a line; no grades) to fit the "
        "topic clusters on; default: seeded random centroids",
    )
    p.add_argument("--promote", action="store_true", help="also point the champion alias at the new version")
    policy_flags(p)


def _init(args: argparse.Namespace) -> None:
    from training.day_one import prepare, run_init

    catalog, prior = prepare(
        args.catalog,
        default=args.default,
        explore_share=args.explore_share,
        explore_budget=args.explore_budget_usd_per_1k,
        target=args.target,
        confidence=args.confidence,
        min_graded=args.min_graded,
    )
    config, features = configs(args)
    registry = PolicyRegistry(args.tracking_uri)
    outcome = run_init(
        catalog,
        prior,
        config=config,
        features=features,
        embedder=_embedder(args),
        registry=registry,
        prompts=args.prompts,
    )
    _registered(outcome, registry, promote=args.promote)


def _registered(outcome: TrainOutcome | InitOutcome, registry: PolicyRegistry, *, promote: bool) -> None:
    """Say what was registered and, with ``--promote``, point the champion alias at it."""
    print(outcome.summary())
    if promote:
        registry.promote(outcome.version.version)
        print(f"version {outcome.version.version} is now champion")


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logs", type=Path, required=True)
    p.add_argument("--catalog", type=Path, default=settings.default_catalog())
    p.add_argument("--promote", action="store_true", help="also point the champion alias at the new version")
    p.add_argument(
        "--warm-start",
        default=None,
        help="continue a policy (version, alias or folder) instead of starting fresh; models new to --catalog "
        "are explored and learned, the others keep what they learned",
    )
    _ray_flags(p)
    _target_flags(p)
    policy_flags(p)


def _train(args: argparse.Namespace) -> None:
    from router_ml.catalog import Catalog
    from training.pipelines import run_train

    if args.ray is not None:  # fill the cache on Ray first; training then reads every embedding from it
        _fill_cache(args, [args.logs])
    config, features = configs(args)
    registry = PolicyRegistry(args.tracking_uri)
    outcome = run_train(
        args.logs,
        catalog=Catalog.load(args.catalog),
        config=config,
        features=features,
        passes=args.passes,
        embedder=_embedder(args),
        registry=registry,
        target=_target(args),
        folds=args.folds,
        confidence=args.confidence,
        warm_start=args.warm_start,
    )
    _registered(outcome, registry, promote=args.promote)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--benchmark",
        type=Path,
        default=settings.default_benchmark(),
        help=f"benchmark Parquet (default ${settings.BENCHMARK_ENV} or the shared MMLU-Pro file)",
    )
    p.add_argument("--catalog", type=Path, default=None, help="default: <benchmark>_prices.csv, else estimated")
    events = "uniformly logged events per TRAIN prompt"
    p.add_argument("--events-per-prompt", type=float, default=DEMO_EVENTS_PER_PROMPT, help=events)
    p.add_argument("--out", type=Path, default=None, help="output folder (default $ROUTER_ML_HOME/demo)")
    _target_flags(p)
    policy_flags(p)


def _demo(args: argparse.Namespace) -> None:
    from training.demo import run_demo

    config, features = configs(args)
    out = args.out or settings.home() / "demo"
    report, text = run_demo(
        args.benchmark,
        out_dir=out,
        events_per_prompt=args.events_per_prompt,
        config=config,
        features=features,
        passes=args.passes,
        embedder=_embedder(args),
        registry=PolicyRegistry(args.tracking_uri),
        target=_target(args),
        catalog_path=args.catalog,
        seed=args.seed,
    )
    print(text)
    print(f"\nregistered version {report['version']}; report in {out / 'report.json'}")


# -- benchmark --------------------------------------------------------------------------------------
def _benchmark_flags(p: argparse.ArgumentParser) -> None:
    d = BenchmarkConfig()
    p.add_argument("--train", type=Path, required=True, help="TRAIN benchmark (long format)")
    p.add_argument("--test", type=Path, required=True, help="TEST benchmark (long format)")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--plot", type=Path, default=None, help="where to draw the frontiers (PNG)")
    p.add_argument(
        "--catalog", type=Path, default=None, help="default: <train>_prices.csv, the shared prices, or estimated"
    )
    quick = BenchmarkConfig.quick()
    p.add_argument(
        "--events-per-prompt",
        type=float,
        default=None,
        help=f"default {d.events_per_prompt:g} (--quick: {quick.events_per_prompt:g})",
    )
    p.add_argument(
        "--lams", default=None, help="comma-separated lam values x the best model's cost per 1k (default: a log sweep)"
    )
    p.add_argument("--collect", default=None, help="low,high: the online stream's cost weights, same units")
    p.add_argument(
        "--seeds", type=int, default=None, help=f"policies per router, averaged (default {d.seeds}; --quick: "
        f"{quick.seeds})"
    )
    p.add_argument(
        "--folds", type=int, default=None, help=f"validation folds inside TRAIN (default {d.folds}; --quick: "
        f"{quick.folds})"
    )
    p.add_argument("--targets", default=None, help="comma-separated targets (default parity, 97.5%%, 10%% and 25%%)")
    p.add_argument("--quick", action="store_true", help="a small protocol for smoke runs")
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--modes", default=",".join(d.modes))
    p.add_argument("--workers", type=int, default=d.workers, help="policies trained in parallel")
    policy_flags(p)


def _benchmark_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The protocol's settings: the flags given, the rest from :class:`BenchmarkConfig` (or its quick form)."""
    config, features = configs(args)
    given: dict[str, Any] = {
        "events_per_prompt": args.events_per_prompt,
        "seeds": args.seeds,
        "folds": args.folds,
        "relative_lams": floats(args.lams, "--lams") if args.lams else None,
        "collect": floats(args.collect, "--collect") if args.collect else None,
        "targets": tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None,
    }
    if given["collect"] is not None and len(given["collect"]) != 2:
        raise InvalidInput("--collect must be two numbers: low,high")
    chosen = dict(
        policy=config,
        features=features,
        knn_k=args.knn_k,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        seed=args.seed,
        workers=args.workers,
        **{k: v for k, v in given.items() if v is not None},
    )
    return BenchmarkConfig.quick(**chosen) if args.quick else BenchmarkConfig(**chosen)


def _benchmark(args: argparse.Namespace) -> None:
    from training.benchmark import format_table, run_benchmark, write_outputs

    result = run_benchmark(args.train, args.test, _benchmark_config(args), _embedder(args), catalog_path=args.catalog)
    write_outputs(result, args.json, args.plot)
    print(format_table(result))
    print(f"\n{result.seconds:.0f} s; results in {args.json}" + (f", frontiers in {args.plot}" if args.plot else ""))


# -- evaluate, promote ------------------------------------------------------------------------------
def _evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="champion", help="version, alias, models:/router-ml@alias, or a policy folder")
    p.add_argument("--logs", type=Path, required=True, help="logged traffic (Parquet); ungraded rows are skipped")
    p.add_argument("--json", type=Path, default=None, help="where to write the full report")
    p.add_argument("--lam", type=float, default=None, help="reward's lam (default: the policy's own)")
    p.add_argument("--clip", type=float, default=None, help="cap importance weights at C (default: no cap)")
    embedder_run_flags(p)
    tracking_flag(p)


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import format_report, run_evaluate

    report = run_evaluate(
        args.policy,
        args.logs,
        tracking_uri=args.tracking_uri,
        embedders=_embedders(args),
        lam=args.lam,
        clip=args.clip,
        json_out=args.json,
    )
    print(format_report(report.evaluation, title=f"\npolicy {report.loaded.label} on {args.logs}"))
    written = [f"report in {args.json}"] if args.json else []
    if report.run_id:
        written.append(f"eval_* metrics logged to run {report.run_id}")
    if written:
        print("\n" + "; ".join(written))


def _promote_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("version")
    p.add_argument("--alias", default="champion")
    p.add_argument("--logs", type=Path, default=None, help="logged traffic to compare the challenger with the holder")
    p.add_argument("--force", action="store_true", help="promote even without --logs or a win (tagged on the version)")
    embedder_run_flags(p)
    tracking_flag(p)


def _promote(args: argparse.Namespace) -> int:
    import sys

    from training.evaluate import Gate, run_promote

    outcome = run_promote(
        args.version,
        registry=PolicyRegistry(args.tracking_uri),
        alias=args.alias,
        logs_path=args.logs,
        force=args.force,
        embedders=_embedders(args),
    )
    if outcome.gate is Gate.REFUSED:
        print(f"refused: {outcome.summary()}", file=sys.stderr)
        return 1
    print(outcome.summary())
    return 0


COMMANDS = (
    Command("simulate", "turn a benchmark into logged traffic with known propensities", _simulate_flags, _simulate),
    Command(
        "split",
        "split a benchmark's prompts into TRAIN and TEST files by a hash of prompt_id",
        _split_flags,
        _split,
    ),
    Command(
        "embed",
        "embed the prompts of Parquet files into the embedding cache (on a Ray cluster with --ray)",
        _embed_flags,
        _embed,
    ),
    Command(
        "init",
        "register a day-one policy for your own catalog, with no logs: the default first, the rest explored",
        _init_flags,
        _init,
    ),
    Command("train", "learn a policy from logged traffic and register it in MLflow", _train_flags, _train),
    Command(
        "demo", "the main job: split, simulate, train, register, replay on held-out prompts", _demo_flags, _demo
    ),
    Command(
        "benchmark",
        "the end-to-end protocol: bandit learning on TRAIN, exact replay on TEST",
        _benchmark_flags,
        _benchmark,
    ),
    Command(
        "evaluate",
        "counterfactual report on logged traffic: quality, cost, reward and savings vs the best model",
        _evaluate_flags,
        _evaluate,
    ),
    Command(
        "promote",
        "point an alias (default champion) at a version; replacing a holder needs --logs (gated) or --force",
        _promote_flags,
        _promote,
        description="Point an alias at a version. If another version holds the alias, both are evaluated on --logs "
        "with the challenger's lam and the challenger must clearly win: its DR reward 95%% lower bound must exceed "
        "the holder's DR reward. A refusal exits 1 and changes nothing; --force overrides and is recorded in tags.",
    ),
)
