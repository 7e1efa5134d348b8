"""The service's subcommands of ``router-ml``: ``serve`` (all-in-one, or a router replica), ``learn``, and ``grade``
(offline, with the service's ``[grader]``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from router_ml import settings
from router_ml.cli import Command
from router_ml.errors import InvalidInput


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


GRADE_HELP = (
    "Grade a file: router-ml grade --logs F [--config serve.toml] [--grader KIND] -o graded.parquet. Check a grader: "
    "router-ml grade --agreement --benchmark F [--config serve.toml] [--grader KIND] [--limit N] [--json F]. "
    "Exit status: 0 every answer graded; 1 some could not be (the output or report is still written, each failed "
    "row with its reason); 2 bad input, flags or config; 130 interrupted (rerun the same command to resume)."
)


def _grade_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logs", type=Path, default=None, help="logged-traffic Parquet with an 'answer' column")
    p.add_argument("-o", "--out", type=Path, default=None, help="the graded table (Parquet)")
    p.add_argument(
        "--restart", action="store_true", help="discard the progress file (<out>.progress) of an earlier run"
    )
    p.add_argument("--agreement", action="store_true", help="measure the grader against --benchmark instead")
    p.add_argument("--benchmark", type=Path, default=None, help="benchmark Parquet with an 'answer' column")
    p.add_argument("--limit", type=int, default=None, help="--agreement: grade a seeded sample of this many rows")
    p.add_argument("--seed", type=int, default=0, help="--agreement: the sample's seed")
    p.add_argument("--threshold", type=float, default=0.5, help="--agreement: the quality that counts as good")
    p.add_argument("--json", type=Path, default=None, help="--agreement: also write the report as JSON here")
    p.add_argument("--config", type=Path, default=None, help="service TOML: [grader] and, for a judge, [upstream]")
    p.add_argument(
        "--grader", default=None, help="judge | exact | regex | numeric | json | json-schema (default: the config's)"
    )
    p.add_argument("--catalog", type=Path, default=settings.default_catalog(), help="where the judge model is")


def _grade(args: argparse.Namespace) -> int:
    from router_ml.atomic import atomic_write_text
    from serve.grade_agreement import measure_agreement
    from serve.grade_batch import batch_grading
    from serve.grade_logs import grade_logs

    if args.agreement and (args.benchmark is None or args.logs is not None):
        raise InvalidInput("grade --agreement needs --benchmark F (and no --logs)")
    if not args.agreement and (args.logs is None or args.out is None):
        raise InvalidInput("grade needs --logs F and -o F (or --agreement --benchmark F)")
    batch = batch_grading(args.grader, args.config, args.catalog)
    try:
        if args.agreement:
            report = measure_agreement(
                args.benchmark, batch, limit=args.limit, seed=args.seed, threshold=args.threshold
            )
            print(report.table())
            if args.json is not None:
                atomic_write_text(args.json, report.to_json() + "\n")
            tally, measured = report.tally, report.figures is not None
        else:
            run = grade_logs(args.logs, args.out, batch, restart=args.restart)
            print(run.summary())
            tally, measured = run.tally, True
    except KeyboardInterrupt:
        where = "" if args.agreement else " (graded rows are kept: rerun the same command to resume)"
        print(f"grade: interrupted{where}", file=sys.stderr)
        return 130
    finally:
        batch.close()
    if tally.failed:
        retry = "" if args.agreement else "; rerun the same command to retry only those"
        print(
            f"{tally.failed} answer(s) could not be graded{retry}:", *tally.failure_lines(), sep="\n", file=sys.stderr
        )
    return 0 if measured and not tally.failed else 1


COMMANDS = (
    Command(
        "serve",
        "serve the policy over HTTP: route, feedback, OpenAI-compatible chat completions (see serve/config.py)",
        _serve_flags,
        _serve,
    ),
    Command("learn", "the single learner of router replicas on a shared decision log", _learn_flags, _learn),
    Command(
        "grade",
        "grade the ungraded rows of a logged-traffic file (resumable), or measure a grader against a benchmark",
        _grade_flags,
        _grade,
        description=GRADE_HELP,
    ),
)
