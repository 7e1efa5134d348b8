"""The ``router-ml`` command line: a thin layer that parses flags and calls the pipelines.

The jobs live in the :mod:`training` package (``pipelines``, ``evaluate``, ``benchmark``, ``demo``), imported
only when a command runs.
Every failure the user can fix (bad data, bad flags, unknown version) ends with one ``error:`` line
and exit status 2, never a traceback. A promotion the gate refuses (the challenger did not clearly beat
the alias's holder) ends with one ``refused:`` line and exit status 1, and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router_ml import settings
from router_ml.embed import BACKENDS, DEFAULT_BACKEND
from router_ml.features import FeatureConfig
from router_ml.operating import Target
from router_ml.policy import PolicyConfig

if TYPE_CHECKING:
    from router_ml.registry import PolicyRegistry
    from training.pipelines import EmbedderOptions


def _evaluation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="embedder threads (torch: $ROUTER_ML_TORCH_THREADS or 1; onnx: $ROUTER_ML_ONNX_THREADS or min(cores, 4))",
    )
    p.add_argument("--batch-size", type=int, default=16, help="embedding batch size")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or local)")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("policy")
    g.add_argument(
        "--lam",
        type=float,
        default=None,
        help=f"quality given up per USD per 1,000 requests (default {PolicyConfig().lam}; train and demo calibrate "
        "it to --target unless it is given)",
    )
    g.add_argument("--exploration", choices=["squarecb", "epsilon"], default="squarecb")
    g.add_argument("--epsilon", type=float, default=0.05, help="exploration rate for --exploration epsilon")
    g.add_argument("--gamma-scale", type=float, default=100.0, help="SquareCB greediness (higher explores less)")
    g.add_argument(
        "--max-weight",
        type=lambda v: None if v == "none" else float(v),
        default=1.0,
        help="cap on VW's importance weight 1/propensity per update (default 1: plain regression; 'none': no cap)",
    )
    g.add_argument("--learning-rate", type=float, default=0.5)
    g.add_argument("--bits", type=int, default=20, help="VW hash table size, log2")
    g.add_argument("--passes", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    f = p.add_argument_group("features")
    f.add_argument("--clusters", default="8,32", help="k-means granularities, comma-separated ('' for none)")
    f.add_argument("--embedding", action="store_true", help="add the raw embedding (namespace e) to the features")
    f.add_argument("--interactions", default="cm", help="shared x action namespace pairs for VW -q (e.g. cm,em,cp)")
    e = p.add_argument_group("embedder")
    e.add_argument("--embedder", default=None, help="local sentence-transformers folder (default: packaged MiniLM)")
    e.add_argument(
        "--embedder-backend",
        choices=list(BACKENDS),
        default=DEFAULT_BACKEND,
        help="torch (sentence-transformers) or onnx (the same model on ONNX Runtime, fp32; built once and cached "
        "under $ROUTER_ML_HOME/onnx); recorded in the policy, which rebuilds the same one to route",
    )
    e.add_argument("--max-len", type=int, default=None, help="embedder truncation length in tokens (default 256)")
    e.add_argument(
        "--threads",
        type=int,
        default=None,
        help="embedder threads (torch: $ROUTER_ML_TORCH_THREADS or 1; onnx: $ROUTER_ML_ONNX_THREADS or min(cores, 4))",
    )
    e.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or local)")


def _ray_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        default=None,
        help="embed on Ray: 'auto' starts a local Ray with this machine's cores, else the address of a cluster "
        "(needs pip install 'router-ml[scale]')",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray embedding actors (default: the cluster's CPUs)")


def _target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target (calibration on the logs)")
    g.add_argument(
        "--target",
        default=None,
        help="parity[:MODEL], quality:FRACTION[:MODEL], budget:USD_PER_1K or budget:PCT%%[:MODEL]; the operating "
        "point is chosen by doubly robust estimates on held-out folds of the logs (default: parity with the best "
        "model in the logs, unless --lam is given)",
    )
    g.add_argument("--folds", type=int, default=3, help="calibration folds (default 3)")
    g.add_argument(
        "--confidence",
        type=float,
        default=0.5,
        help="one-sided confidence a quality target is met with (default 0.5: on the point estimate)",
    )


def _target(args: argparse.Namespace) -> Target | None:
    """The calibration target: --target, else parity unless a fixed --lam was asked for."""
    if args.target is not None:
        return Target.parse(args.target)
    return None if args.lam is not None else Target.parse("parity")


def _configs(args: argparse.Namespace) -> tuple[PolicyConfig, FeatureConfig]:
    config = PolicyConfig(
        lam=PolicyConfig().lam if args.lam is None else args.lam,
        exploration=args.exploration,
        epsilon=args.epsilon,
        gamma_scale=args.gamma_scale,
        learning_rate=args.learning_rate,
        max_weight=args.max_weight,
        bits=args.bits,
        seed=args.seed,
    )
    features = FeatureConfig.parse(args.clusters, args.embedding, args.interactions, seed=args.seed)
    return config, features


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    parser = argparse.ArgumentParser(prog="router-ml", description="A learned, cost-aware LLM router.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("catalog", help="write a catalog TOML from a price list CSV")
    p.add_argument("--prices", type=Path, default=settings.default_prices())
    p.add_argument("-o", "--out", type=Path, default=settings.default_catalog())

    p = sub.add_parser("simulate", help="turn a benchmark into logged traffic with known propensities")
    p.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logging", choices=["uniform", "epsilon-greedy"], default="uniform")
    p.add_argument("--greedy-model", default=None, help="the fixed model of --logging epsilon-greedy")
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("-o", "--out", type=Path, required=True)

    p = sub.add_parser("train", help="learn a policy from logged traffic and register it in MLflow")
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
    _policy_flags(p)

    p = sub.add_parser("demo", help="the main job: split, simulate, train, register, replay on held-out prompts")
    p.add_argument(
        "--benchmark",
        type=Path,
        default=settings.default_benchmark(),
        help=f"benchmark Parquet (default ${settings.BENCHMARK_ENV} or the shared MMLU-Pro file)",
    )
    p.add_argument("--catalog", type=Path, default=None, help="default: <benchmark>_prices.csv, else estimated")
    p.add_argument("--events-per-prompt", type=float, default=12.0, help="uniformly logged events per TRAIN prompt")
    p.add_argument("--out", type=Path, default=None, help="output folder (default $ROUTER_ML_HOME/demo)")
    _target_flags(p)
    _policy_flags(p)

    p = sub.add_parser("split", help="split a benchmark's prompts into TRAIN and TEST files by a hash of prompt_id")
    p.add_argument("--benchmark", type=Path, default=settings.default_benchmark())
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--salt", default="", help="changes which prompts land in TEST")
    p.add_argument("--train-out", type=Path, required=True)
    p.add_argument("--test-out", type=Path, required=True)

    p = sub.add_parser("benchmark", help="the end-to-end protocol: bandit learning on TRAIN, exact replay on TEST")
    p.add_argument("--train", type=Path, required=True, help="TRAIN benchmark (long format)")
    p.add_argument("--test", type=Path, required=True, help="TEST benchmark (long format)")
    p.add_argument("--json", type=Path, required=True, help="where to write the results")
    p.add_argument("--plot", type=Path, default=None, help="where to draw the frontiers (PNG)")
    p.add_argument(
        "--catalog", type=Path, default=None, help="default: <train>_prices.csv, the shared prices, or estimated"
    )
    p.add_argument("--events-per-prompt", type=float, default=None, help="default 12 (--quick: 3)")
    p.add_argument(
        "--lams", default=None, help="comma-separated lam values x the best model's cost per 1k (default: a log sweep)"
    )
    p.add_argument("--collect", default=None, help="low,high: the online stream's cost weights, same units")
    p.add_argument("--seeds", type=int, default=None, help="policies per router, averaged (default 3; --quick: 2)")
    p.add_argument("--folds", type=int, default=None, help="validation folds inside TRAIN (default 3; --quick: 2)")
    p.add_argument("--targets", default=None, help="comma-separated targets (default parity, 97.5%%, 10%% and 25%%)")
    p.add_argument("--quick", action="store_true", help="a small protocol for smoke runs")
    p.add_argument("--knn-k", type=int, default=100)
    p.add_argument("--modes", default="online,offline")
    p.add_argument("--workers", type=int, default=2, help="policies trained in parallel")
    _policy_flags(p)

    p = sub.add_parser(
        "evaluate", help="counterfactual report on logged traffic: quality, cost, reward and savings vs the best model"
    )
    p.add_argument("--policy", default="champion", help="version, alias, models:/router-ml@alias, or a policy folder")
    p.add_argument("--logs", type=Path, required=True, help="logged traffic (Parquet); ungraded rows are skipped")
    p.add_argument("--json", type=Path, default=None, help="where to write the full report")
    p.add_argument("--lam", type=float, default=None, help="reward's lam (default: the policy's own)")
    p.add_argument("--clip", type=float, default=None, help="cap importance weights at C (default: no cap)")
    _evaluation_flags(p)

    p = sub.add_parser(
        "promote",
        help="point an alias (default champion) at a version; replacing a holder needs --logs (gated) or --force",
        description="Point an alias at a version. If another version holds the alias, both are evaluated on --logs "
        "with the challenger's lam and the challenger must clearly win: its DR reward 95%% lower bound must exceed "
        "the holder's DR reward. A refusal exits 1 and changes nothing; --force overrides and is recorded in tags.",
    )
    p.add_argument("version")
    p.add_argument("--alias", default="champion")
    p.add_argument("--logs", type=Path, default=None, help="logged traffic to compare the challenger with the holder")
    p.add_argument("--force", action="store_true", help="promote even without --logs or a win (tagged on the version)")
    _evaluation_flags(p)

    p = sub.add_parser("versions", help="list registered policy versions")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser("route", help="route prompts with a policy (version, alias or folder), greedily")
    p.add_argument("prompts", nargs="+")
    p.add_argument("--policy", default="champion")
    p.add_argument("--tracking-uri", default=None)

    p = sub.add_parser(
        "serve",
        help="serve the policy over HTTP: route, feedback, OpenAI-compatible chat completions (see serve/config.py)",
    )
    p.add_argument("--config", type=Path, default=None, help="service TOML (default: all defaults)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument(
        "--role",
        choices=["all", "router"],
        default="all",
        help="all: decide and learn (default); router: a replica on a shared log, learning left to router-ml learn",
    )

    p = sub.add_parser("embed", help="embed the prompts of Parquet files into the embedding cache (optionally on Ray)")
    p.add_argument("--logs", type=Path, nargs="+", required=True, help="Parquet files with a 'prompt' column")
    _ray_flags(p)
    e = p.add_argument_group("embedder")
    e.add_argument("--embedder", default=None, help="local sentence-transformers folder (default: packaged MiniLM)")
    e.add_argument("--embedder-backend", choices=list(BACKENDS), default=DEFAULT_BACKEND)
    e.add_argument("--max-len", type=int, default=None, help="embedder truncation length in tokens (default 256)")
    e.add_argument("--threads", type=int, default=None, help="embedder threads in this process")

    p = sub.add_parser("learn", help="the single learner of router replicas on a shared decision log")
    p.add_argument("--follow", action="store_true", required=True, help="learn from the log until stopped")
    p.add_argument("--config", type=Path, default=None, help="the replicas' serve.toml (log, policy, learning)")
    p.add_argument("--poll-seconds", type=float, default=0.5, help="how often to look for new grades")

    p = sub.add_parser("export-logs", help="write the service's decision log as logged-traffic Parquet for train")
    p.add_argument(
        "--log", default=None, help="decision log: a SQLite file or a postgresql:// URL (default: the service's)"
    )
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--include-fallback", action="store_true", help="keep decisions a fallback model answered")
    return parser


def _registry(args: argparse.Namespace) -> PolicyRegistry:
    from router_ml.registry import PolicyRegistry

    return PolicyRegistry(args.tracking_uri)


def _embedder(args: argparse.Namespace) -> EmbedderOptions:
    from training.pipelines import EmbedderOptions

    return EmbedderOptions(
        getattr(args, "embedder", None),
        args.threads,
        args.batch_size,
        backend=getattr(args, "embedder_backend", DEFAULT_BACKEND),
        max_len=getattr(args, "max_len", None),
    )


def _cmd_catalog(args: argparse.Namespace) -> None:
    from router_ml.catalog import Catalog

    catalog = Catalog.from_prices_csv(args.prices)
    catalog.save(args.out)
    print(f"wrote {len(catalog)} models to {args.out}")


def _cmd_simulate(args: argparse.Namespace) -> None:
    from training import pipelines

    logging = pipelines.logging_policy(args.logging, args.greedy_model, args.epsilon)
    logs = pipelines.run_simulate(args.benchmark, args.events, args.seed, args.out, logging)
    print(f"wrote {logs.height} events ({logging.name}) to {args.out}")


def _cmd_split(args: argparse.Namespace) -> None:
    from training.pipelines import run_split

    n_train, n_test = run_split(args.benchmark, args.test_fraction, args.salt, args.train_out, args.test_out)
    print(f"TRAIN {n_train} prompts -> {args.train_out}\nTEST {n_test} prompts -> {args.test_out}")


def _embed(args: argparse.Namespace, paths: list[Path]) -> str:
    from router_ml.batch_embed import EncoderSpec, embed_files

    spec = EncoderSpec(args.embedder_backend, args.embedder, args.max_len, args.threads)
    return embed_files(paths, spec, settings.embedding_cache_path(), ray=args.ray, workers=args.workers).format()


def _cmd_embed(args: argparse.Namespace) -> None:
    print(_embed(args, args.logs))


def _cmd_train(args: argparse.Namespace) -> None:
    from router_ml.catalog import Catalog
    from training.pipelines import run_train

    if args.ray is not None:  # fill the cache on Ray first; training then reads every embedding from it
        print(_embed(args, [args.logs]))
    config, features = _configs(args)
    registry = _registry(args)
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
    r = outcome.report
    print(f"learned from {r.n_events} events ({r.n_ungraded} ungraded skipped) at {r.events_per_second:,.0f} events/s")
    print(f"progressive SNIPS: quality {r.progressive_quality:.4f}, cost ${r.progressive_cost_usd * 1000:.4f}/1k")
    if outcome.calibration is not None:
        print(outcome.calibration.format())
    else:
        print(f"operating point: {outcome.policy.operating.label} (no calibration: --lam was given)")
    print(f"registered {outcome.version.name} version {outcome.version.version} (run {outcome.version.run_id})")
    if args.promote:
        registry.promote(outcome.version.version)
        print(f"version {outcome.version.version} is now champion")


def _cmd_demo(args: argparse.Namespace) -> None:
    from training.demo import run_demo

    config, features = _configs(args)
    out = args.out or settings.home() / "demo"
    report, text = run_demo(
        args.benchmark,
        out_dir=out,
        events_per_prompt=args.events_per_prompt,
        config=config,
        features=features,
        passes=args.passes,
        embedder=_embedder(args),
        registry=_registry(args),
        target=_target(args),
        catalog_path=args.catalog,
        seed=args.seed,
    )
    print(text)
    print(f"\nregistered version {report['version']}; report in {out / 'report.json'}")


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from exc


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from training.benchmark import BenchmarkConfig, format_table, run_benchmark, write_outputs

    config, features = _configs(args)
    given: dict[str, Any] = {
        "events_per_prompt": args.events_per_prompt,
        "seeds": args.seeds,
        "folds": args.folds,
        "relative_lams": _floats(args.lams, "--lams") if args.lams else None,
        "collect": _floats(args.collect, "--collect") if args.collect else None,
        "targets": tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None,
    }
    if given["collect"] is not None and len(given["collect"]) != 2:
        raise ValueError("--collect must be two numbers: low,high")
    settings_ = dict(
        policy=config,
        features=features,
        knn_k=args.knn_k,
        modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
        seed=args.seed,
        workers=args.workers,
        **{k: v for k, v in given.items() if v is not None},
    )
    bench_cfg = BenchmarkConfig.quick(**settings_) if args.quick else BenchmarkConfig(**settings_)
    result = run_benchmark(args.train, args.test, bench_cfg, _embedder(args).build(), catalog_path=args.catalog)
    write_outputs(result, args.json, args.plot)
    print(format_table(result))
    print(f"\n{result['seconds']:.0f} s; results in {args.json}" + (f", frontiers in {args.plot}" if args.plot else ""))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import format_report, run_evaluate

    outcome = run_evaluate(
        args.policy,
        args.logs,
        tracking_uri=args.tracking_uri,
        embedder=_embedder(args),
        lam=args.lam,
        clip=args.clip,
        json_out=args.json,
    )
    label = outcome.report["policy"]["version"]
    print(format_report(outcome.evaluation, title=f"\npolicy {label} on {args.logs}"))
    written = [f"report in {args.json}"] if args.json else []
    if outcome.run_id:
        written.append(f"eval_* metrics logged to run {outcome.run_id}")
    if written:
        print("\n" + "; ".join(written))


def _cmd_promote(args: argparse.Namespace) -> int:
    from training.evaluate import PromotionRefused, run_promote

    try:
        outcome = run_promote(
            args.version,
            registry=_registry(args),
            alias=args.alias,
            logs_path=args.logs,
            force=args.force,
            embedder=_embedder(args),
        )
    except PromotionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    info, d = outcome.version, outcome.decision
    if outcome.gate == "unchanged":
        print(f"{info.name} version {info.version} already is '{args.alias}'")
        return 0
    how = {"no-previous": "no version held it", "passed": "gate passed", "forced": "forced"}[outcome.gate]
    if d is not None:
        how += (
            f": DR reward {d.challenger.value:.4f} [{d.challenger.low:.4f}, {d.challenger.high:.4f}] vs version "
            f"{outcome.previous.version if outcome.previous else '?'}'s {d.holder.value:.4f} (lam {d.lam:g})"
        )
    print(f"{info.name} version {info.version} is now '{args.alias}' ({how})")
    return 0


def _cmd_versions(args: argparse.Namespace) -> None:
    for v in _registry(args).versions():
        print(f"{v.version:>4}  {','.join(v.aliases) or '-':<12} run {v.run_id}  {json.dumps(v.tags)}")


def _cmd_route(args: argparse.Namespace) -> None:
    from router_ml.registry import load_policy
    from router_ml.router import Router

    artifact, version = load_policy(args.policy, _registry(args))
    router = Router.from_artifact(artifact, version=version)
    for prompt, (model, prob) in zip(args.prompts, router.choose_greedy(args.prompts)):
        print(json.dumps({"prompt": prompt[:60], "model": model, "probability": round(prob, 4), "version": version}))


def _cmd_serve(args: argparse.Namespace) -> None:
    from serve.app import run

    run(str(args.config) if args.config else None, args.host, args.port, role=args.role)


def _cmd_learn(args: argparse.Namespace) -> None:
    from serve.follow import run

    run(str(args.config) if args.config else None, poll_seconds=args.poll_seconds)


def _cmd_export_logs(args: argparse.Namespace) -> None:
    from router_ml.decision_log import DecisionLog

    location = args.log or str(settings.decision_log_path())
    if "://" not in location and not Path(location).exists():
        raise FileNotFoundError(f"export-logs: no decision log at {location}")
    decision_log = DecisionLog(location)
    try:
        frame = decision_log.export(args.out, include_fallback=args.include_fallback)
    finally:
        decision_log.close()
    graded = frame.filter(frame["quality"].is_not_null()).height
    print(f"wrote {frame.height} decisions ({graded} graded) to {args.out}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "catalog": _cmd_catalog,
    "simulate": _cmd_simulate,
    "split": _cmd_split,
    "train": _cmd_train,
    "demo": _cmd_demo,
    "benchmark": _cmd_benchmark,
    "evaluate": _cmd_evaluate,
    "promote": _cmd_promote,
    "versions": _cmd_versions,
    "route": _cmd_route,
    "serve": _cmd_serve,
    "learn": _cmd_learn,
    "embed": _cmd_embed,
    "export-logs": _cmd_export_logs,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``router-ml`` console script."""
    from threadpoolctl import threadpool_limits

    from router_ml.catalog import CatalogError
    from router_ml.contracts import DataValidationError
    from router_ml.registry import RegistryError

    args = build_parser().parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        with threadpool_limits(limits=settings.blas_threads()):
            return COMMANDS[args.command](args) or 0
    except (DataValidationError, CatalogError, RegistryError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
