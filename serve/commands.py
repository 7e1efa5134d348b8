"""The service's subcommands of ``router-ml``: ``serve`` (all-in-one, or a router replica) and ``learn``."""

from __future__ import annotations

import argparse
from pathlib import Path

from router_ml.cli import Command


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="service TOML (default: all defaults)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument(
        "--role",
        choices=["all", "router"],
        default="all",
        help="all: decide and learn (default); router: a replica on a shared log, learning left to router-ml learn",
    )


def _serve(args: argparse.Namespace) -> None:
    from serve.app import run

    run(str(args.config) if args.config else None, args.host, args.port, role=args.role)


def _learn_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow", action="store_true", required=True, help="learn from the log until stopped")
    p.add_argument("--config", type=Path, default=None, help="the replicas' serve.toml (log, policy, learning)")
    p.add_argument("--poll-seconds", type=float, default=0.5, help="how often to look for new grades")


def _learn(args: argparse.Namespace) -> None:
    from serve.follow import run

    run(str(args.config) if args.config else None, poll_seconds=args.poll_seconds)


COMMANDS = (
    Command(
        "serve",
        "serve the policy over HTTP: route, feedback, OpenAI-compatible chat completions (see serve/config.py)",
        _serve_flags,
        _serve,
    ),
    Command("learn", "the single learner of router replicas on a shared decision log", _learn_flags, _learn),
)
