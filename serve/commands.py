"""The service's subcommand of ``router-ml``: ``serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from router_ml.cli import Command


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="service TOML (default: all defaults)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)


def _serve(args: argparse.Namespace) -> None:
    from serve.app import run

    run(str(args.config) if args.config else None, args.host, args.port)


COMMANDS = (
    Command(
        "serve",
        "serve the policy over HTTP: route, feedback, OpenAI-compatible chat completions (see serve/config.py)",
        _serve_flags,
        _serve,
    ),
)
