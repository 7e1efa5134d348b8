"""The progress of an unfinished ``router-ml grade`` run, kept durably beside its output so a rerun resumes it.

The sidecar ``<output>.progress`` is a SQLite file holding, for each answer graded so far, its key (the row's
``event_id``), quality, the grader's detail and what grading it cost: never the prompt or the answer. Each grade is
committed (fsynced) as it arrives, so a run stopped by Ctrl-C, ``kill -9`` or a crash loses at most the answers that
were in flight. The file names the input (the SHA-256 of its bytes) and the grader (``name:version``) it belongs to,
and is refused for any other; while a run holds it (an advisory lock on ``<output>.progress.lock``, which the kernel
drops when the process dies), a second run on the same output is refused too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from router_ml.errors import InvalidInput

_CHUNK = 1 << 20


class ProgressRefused(InvalidInput):
    """The progress file belongs to another run (input or grader), is in use, or is not a progress file."""


@dataclass(frozen=True)
class SavedGrade:
    """One answer's grade as the progress file keeps it."""

    quality: float
    detail: str
    cost_usd: float


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def progress_path(output: Path) -> Path:
    """Where the progress of a run writing ``output`` is kept: ``<output>.progress``."""
    return output.with_name(output.name + ".progress")


class GradeProgress:
    """The grades of one run so far (``input_digest`` + ``grader``), in the SQLite file at ``path``.

    An existing file of another run is refused with :class:`ProgressRefused`, unless ``restart`` discards it."""

    def __init__(self, path: Path, *, input_digest: str, grader: str, restart: bool = False) -> None:
        self.path = path
        self._lock = self._take_lock(path)
        try:
            if restart:
                self._delete_files()
            self._db = self._open(input_digest, grader)
        except BaseException:
            os.close(self._lock)
            raise

    @staticmethod
    def _take_lock(path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise ProgressRefused(
                f"grade: another run is writing {path.name}; wait for it, or pick another -o"
            ) from None
        return lock

    def _open(self, input_digest: str, grader: str) -> sqlite3.Connection:
        want = {"input_sha256": input_digest, "grader": grader}
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS grades (key TEXT PRIMARY KEY, quality REAL NOT NULL, detail TEXT NOT NULL,"
                " cost_usd REAL NOT NULL, graded_at REAL NOT NULL)"
            )
            have = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ProgressRefused(
                f"grade: {self.path} is not a progress file ({exc}); remove it, or pass --restart"
            ) from None
        if not have:
            db.executemany("INSERT INTO meta VALUES (?, ?)", want.items())
            return db
        for key, what in (("input_sha256", "another input file"), ("grader", "another grader")):
            if have.get(key) != want[key]:
                db.close()
                raise ProgressRefused(
                    f"grade: {self.path} holds the progress of {what} ({key} {have.get(key)}, now {want[key]}); "
                    "pass --restart to discard it, or pick another -o"
                )
        return db

    def saved(self) -> dict[str, SavedGrade]:
        """Every grade kept so far, by key."""
        rows = self._db.execute("SELECT key, quality, detail, cost_usd FROM grades").fetchall()
        return {k: SavedGrade(q, d, c) for k, q, d, c in rows}

    def save(self, key: str, grade: SavedGrade) -> None:
        """Keep one grade, durably, before returning."""
        self._db.execute(
            "INSERT OR REPLACE INTO grades VALUES (?, ?, ?, ?, ?)",
            (key, grade.quality, grade.detail, grade.cost_usd, time.time()),
        )

    def close(self) -> None:
        """Close the file and let another run take it."""
        self._db.close()
        os.close(self._lock)

    def remove(self) -> None:
        """Close and delete the file: the run is finished."""
        self._db.close()
        self._delete_files()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path.with_name(self.path.name + ".lock"))
        os.close(self._lock)

    def _delete_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
