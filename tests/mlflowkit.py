"""A real ``mlflow server`` for the tests: backend store on the test PostgreSQL, artifacts proxied to a shared folder,
one worker, job execution and telemetry off, on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.pgkit import PostgresServer
from tests.servekit import free_port

QUIET = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job runner beside the tracking server
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
"""The environment that keeps an ``mlflow server`` to tracking and registry work alone."""


def command(backend: str, artifacts: Path, port: int) -> list[str]:
    """The server's command line (the README's deployment section uses the same flags)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


@contextmanager
def mlflow_server(postgres: PostgresServer, root: Path, database: str = "mlflow") -> Iterator[str]:
    """A running server whose backend store is a new database on ``postgres``; yields its tracking URI."""
    url = postgres.create_database(database).replace("postgresql://", "postgresql+psycopg://", 1)
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "mlflow.err", "ab") as err:
        proc = subprocess.Popen(
            command(url, root / "artifacts", port),
            env={**os.environ, **QUIET},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'mlflow.err').read_text()[-2000:]}")
            try:
                if httpx.get(f"{uri}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start")
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
