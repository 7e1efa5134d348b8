"""A real PostgreSQL server for the tests: initdb and pg_ctl from the machine's package, in a temp folder owned by the
``postgres`` user (PostgreSQL refuses to run as root), on a free loopback port."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servekit import free_port

PASSWORD = "router-ml-test"  # a real password, so the tests can check it never reaches an error message


def pg_bin(tool: str) -> str | None:
    """The path of a PostgreSQL server tool: on PATH, else the newest Debian package's."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return versions[-1] if versions else None


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


class PostgresServer:
    """One cluster with a database ``router`` and a user ``router`` (password :data:`PASSWORD`)."""

    def __init__(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL is not installed (initdb, pg_ctl); .ci/run installs it with apt-get")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="router-ml-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def url(self) -> str:
        """The database's URL, password included."""
        return f"postgresql://router:{PASSWORD}@127.0.0.1:{self.port}/router"

    def start(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}"
        subprocess.run(
            _as_postgres(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"),
            check=True,
            capture_output=True,
        )
        self.sql(f"CREATE USER router PASSWORD '{PASSWORD}'")
        self.sql("CREATE DATABASE router OWNER router")
        return self

    def sql(self, statement: str) -> None:
        """Run one statement as the superuser, over the server's socket."""
        psql = ["psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        subprocess.run(_as_postgres(*psql, "-v", "ON_ERROR_STOP=1", "-c", statement), check=True, capture_output=True)

    def create_database(self, name: str) -> str:
        """A fresh empty database owned by ``router``; returns its URL."""
        self.sql(f"CREATE DATABASE {name} OWNER router")
        return f"postgresql://router:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"), check=False, capture_output=True
        )

    def restart(self) -> None:
        """Start again after :meth:`stop` (same data, same port)."""
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root}"
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                _as_postgres(
                    self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
                ),
                capture_output=True,
                check=False,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres() -> Iterator[PostgresServer]:
    """A running server, destroyed afterwards."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()
