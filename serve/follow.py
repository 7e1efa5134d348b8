"""The single learner of a scaled-out deployment: ``router-ml learn --follow --config serve.toml``.

Router replicas (``router-ml serve --role router``) decide and commit grades to the shared decision log; this
process reads the grades in feedback order, updates the policy, and publishes snapshots to MLflow exactly as the
all-in-one service does (parent version, base version, the log's id and the highest feedback sequence number the
snapshot holds). On start it loads the newest snapshot of the served policy that this log produced and replays
the grades after it, so after a crash or a restart every grade is learned exactly once. It holds the log's
learner lock (a PostgreSQL advisory lock, or a lock file beside a SQLite log) for as long as it runs: a second
learner, or an all-in-one service on the same log, refuses to start.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from router_ml.errors import InvalidInput
from router_ml.log_store import LogUnavailable
from serve.config import ServeConfig
from serve.startup import StartupError, load_learner, open_log

log = logging.getLogger("router_ml.learn")


def follow(config: ServeConfig, *, poll_seconds: float = 0.5, stop: threading.Event | None = None) -> int:
    """Learn from the shared log until ``stop`` is set (or SIGTERM/SIGINT when run as a command); returns how many
    grades were learned. A graceful stop snapshots what was learned since the last snapshot."""
    if not poll_seconds > 0:
        raise InvalidInput(f"learn: 'poll_seconds' must be > 0, got {poll_seconds}")
    stop = stop or threading.Event()
    decision_log = open_log(config)
    try:
        with decision_log.store.learner_lock() as sole:
            if not sole:
                raise StartupError(
                    f"learn: cannot start: decision log {decision_log.where}: another learner (or an all-in-one "
                    "service) already learns from it"
                )
            learner, loaded = load_learner(config, decision_log)
            learned = learner.start(loaded)
            log.info("learner: serving %s, replayed %d grades", learner.version, learned)
            last_poll = time.monotonic()
            try:
                while not stop.is_set():
                    try:
                        taken = learner.follow_once()
                    except LogUnavailable as exc:  # the database is away: wait for it, then go on where it left off
                        log.warning("learner: %s; retrying", exc)
                        stop.wait(max(poll_seconds, 1.0))
                        continue
                    learned += taken
                    learner.tick_now()
                    if time.monotonic() - last_poll >= config.learning.reload_poll_seconds:
                        last_poll = time.monotonic()
                        learner.poll_alias()
                    if not taken:
                        stop.wait(poll_seconds)
                learner.snapshot_now()
            finally:
                learner.close()
            return learned
    finally:
        decision_log.close()


def run(config_path: str | None, poll_seconds: float = 0.5) -> None:
    """The ``router-ml learn --follow`` command: follow until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def graceful(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, graceful)
    signal.signal(signal.SIGINT, graceful)
    learned = follow(ServeConfig.load(config_path), poll_seconds=poll_seconds, stop=stop)
    log.info("learner: stopped after learning %d grades", learned)
