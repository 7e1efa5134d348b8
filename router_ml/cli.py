"""The ``router-ml`` command line: the shell every subcommand runs in, the library's own subcommands, and the flags
that several subcommands share.

The library never imports the layers above it. The training jobs (``simulate``, ``split``, ``train``, ``demo``,
``benchmark``, ``evaluate``, ``promote``) and the service (``serve``) add their subcommands from their own
``commands`` modules, which this shell loads by name (:data:`PLUGINS`) when it builds the parser.

Every failure the user can fix (:class:`~router_ml.errors.UserError`: bad data, bad flags, an unknown version) ends
with one ``error:`` line and exit status 2. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from router_ml import settings
from router_ml.embed import BACKENDS, DEFAULT_BACKEND, DEFAULT_BATCH_SIZE, EmbedderSpec
from router_ml.errors import InvalidInput, MissingInput, UserError
from router_ml.features import FeatureConfig
from router_ml.policy import PolicyConfig

PLUGINS = ("training.commands", "serve.commands")
"""Modules that add subcommands: each has ``COMMANDS``, a sequence of :class:`Command`."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, its help line, how it adds its flags, and what it runs (``None`` or 0 is success,
    any other number the exit status)."""

    name: str
    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


# -- flags several subcommands share ---------------------------------------------------------------
def tracking_flag(p: argparse.ArgumentParser) -> None:
    """``--tracking-uri``."""
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or local)")


def embedder_run_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How an encoder runs: ``--threads``, ``--batch-size``."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="embedder threads (torch: $ROUTER_ML_TORCH_THREADS or 1; onnx: $ROUTER_ML_ONNX_THREADS or min(cores, 4))",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="embedding batch size")


def embedder_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Which encoder (:func:`embedder_spec`): ``--embedder``, ``--embedder-backend``, ``--max-len``."""
    p.add_argument("--embedder", default=None, help="local sentence-transformers folder (default: packaged MiniLM)")
    p.add_argument(
        "--embedder-backend",
        choices=list(BACKENDS),
        default=DEFAULT_BACKEND,
        help="torch (sentence-transformers) or onnx (the same model on ONNX Runtime, fp32; built once and cached "
        "under $ROUTER_ML_HOME/onnx); recorded in the policy, which rebuilds the same one to route",
    )
    p.add_argument("--max-len", type=int, default=None, help="embedder truncation length in tokens (default 256)")


def policy_flags(p: argparse.ArgumentParser) -> None:
    """The learner's, the features' and the encoder's settings; every default is the config dataclasses' own."""
    policy, features = PolicyConfig(), FeatureConfig()
    g = p.add_argument_group("policy")
    g.add_argument(
        "--lam",
        type=float,
        default=None,
        help=f"quality given up per USD per 1,000 requests (default {policy.lam}; train and demo calibrate "
        "it to --target unless it is given)",
    )
    g.add_argument("--exploration", choices=["squarecb", "epsilon"], default=policy.exploration)
    g.add_argument("--epsilon", type=float, default=policy.epsilon, help="exploration rate for --exploration epsilon")
    g.add_argument(
        "--gamma-scale", type=float, default=policy.gamma_scale, help="SquareCB greediness (higher explores less)"
    )
    g.add_argument(
        "--max-weight",
        type=lambda v: None if v == "none" else float(v),
        default=policy.max_weight,
        help=f"cap on VW's importance weight 1/propensity per update (default {policy.max_weight:g}: plain "
        "regression; 'none': no cap)",
    )
    g.add_argument("--learning-rate", type=float, default=policy.learning_rate)
    g.add_argument("--bits", type=int, default=policy.bits, help="VW hash table size, log2")
    g.add_argument("--passes", type=int, default=1)
    g.add_argument("--seed", type=int, default=policy.seed)
    f = p.add_argument_group("features")
    f.add_argument(
        "--clusters",
        default=",".join(map(str, features.clusters)),
        help="k-means granularities, comma-separated ('' for none)",
    )
    f.add_argument("--embedding", action="store_true", help="add the raw embedding (namespace e) to the features")
    f.add_argument(
        "--interactions",
        default=",".join(features.interactions),
        help="shared x action namespace pairs for VW -q (e.g. cm,em,cp)",
    )
    e = p.add_argument_group("embedder")
    embedder_flags(e)
    embedder_run_flags(e)
    tracking_flag(p)


def configs(args: argparse.Namespace) -> tuple[PolicyConfig, FeatureConfig]:
    """The learner and feature configs the flags of :func:`policy_flags` ask for."""
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


def embedder_spec(args: argparse.Namespace) -> EmbedderSpec:
    """The encoder the flags of :func:`policy_flags` name."""
    return EmbedderSpec(args.embedder_backend, args.embedder, args.max_len)


def floats(text: str, flag: str) -> tuple[float, ...]:
    """Comma-separated numbers (``--lams 0.1,1``)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise InvalidInput(f"{flag} must be comma-separated numbers, got {text!r}") from exc


# -- the library's own subcommands ----------------------------------------------------------------
def _catalog_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prices", type=Path, default=settings.default_prices())
    p.add_argument("-o", "--out", type=Path, default=settings.default_catalog())


def _catalog(args: argparse.Namespace) -> None:
    from router_ml.catalog import Catalog

    catalog = Catalog.from_prices_csv(args.prices)
    catalog.save(args.out)
    print(f"wrote {len(catalog)} models to {args.out}")


def _versions(args: argparse.Namespace) -> None:
    from router_ml.registry import PolicyRegistry

    for v in PolicyRegistry(args.tracking_uri).versions():
        print(f"{v.version:>4}  {','.join(v.aliases) or '-':<12} run {v.run_id}  {json.dumps(v.tags)}")


def _route_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="+")
    p.add_argument("--policy", default="champion", help="version, alias, models:/router-ml@alias, or a policy folder")
    tracking_flag(p)


def _route(args: argparse.Namespace) -> None:
    from router_ml.registry import PolicyRef, PolicyRegistry, load_policy
    from router_ml.router import Router

    ref = PolicyRef.parse(args.policy)
    loaded = load_policy(ref, None if ref.kind == "folder" else PolicyRegistry(args.tracking_uri))
    router = Router.from_artifact(loaded.artifact, version=loaded.label)
    for prompt, (model, prob) in zip(args.prompts, router.choose_greedy(args.prompts)):
        line = {"prompt": prompt[:60], "model": model, "probability": round(prob, 4), "version": loaded.label}
        print(json.dumps(line))


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log", default=None, help="decision log: a SQLite file or a postgresql:// URL (default: the service's)"
    )
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--include-fallback", action="store_true", help="keep decisions a fallback model answered")


def _export_logs(args: argparse.Namespace) -> None:
    from router_ml.decision_log import DecisionLog

    location = args.log or str(settings.decision_log_path())
    if "://" not in location and not Path(location).exists():
        raise MissingInput(f"export-logs: no decision log at {location}")
    decision_log = DecisionLog(location)
    try:
        frame = decision_log.export(args.out, include_fallback=args.include_fallback)
    finally:
        decision_log.close()
    graded = frame.filter(frame["quality"].is_not_null()).height
    print(f"wrote {frame.height} decisions ({graded} graded) to {args.out}")


COMMANDS: tuple[Command, ...] = (
    Command("catalog", "write a catalog TOML from a price list CSV", _catalog_flags, _catalog),
    Command("versions", "list registered policy versions", tracking_flag, _versions),
    Command("route", "route prompts with a policy (version, alias or folder), greedily", _route_flags, _route),
    Command(
        "export-logs",
        "write the service's decision log as logged-traffic Parquet for train",
        _export_flags,
        _export_logs,
    ),
)


def commands() -> list[Command]:
    """Every subcommand: the library's and those of :data:`PLUGINS`, in the order ``--help`` lists them."""
    found = list(COMMANDS)
    for name in PLUGINS:
        found += importlib.import_module(name).COMMANDS
    return found


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; each parsed namespace carries its command as ``command``."""
    parser = argparse.ArgumentParser(prog="router-ml", description="A learned, cost-aware LLM router.")
    sub = parser.add_subparsers(dest="command_name", required=True)
    for command in commands():
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.flags(p)
        p.set_defaults(command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``router-ml`` console script."""
    from threadpoolctl import threadpool_limits

    args = build_parser().parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        with threadpool_limits(limits=settings.blas_threads()):
            return args.command.run(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
