"""Faults under the decision log, on real disks: the service answers 503 with the disk's reason, `/readyz` says not
ready, and both recover without a restart once the fault clears; a start-up fault is one line and a non-zero exit.

The log of the shared test server (``hardened`` in conftest) lives on a 4 MiB tmpfs mounted for the session (the tests
run as root, where chmod does not stop writes): it is filled to the last block for "disk full", and a second SQLite
connection holds the write lock for "database locked".
A read-only folder is tested at start-up (a tmpfs mounted read-only); at run time the kernel refuses to remount a
filesystem read-only while the service holds the log open for writing (EBUSY), so that fault cannot be made for real
here. Where mounting is not allowed the disk tests are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from router_ml.artifacts import PolicyArtifact
from tests.servekit import FakeUpstream, Server, ServerProcess, champion, client, mount_tmpfs, unmount, write_config


@pytest.fixture
def server(hardened: Server) -> Server:
    return hardened



def assert_refused(server: Server, reason: str, graded: str) -> None:
    """Writes get 503 naming ``reason``; the service says it is not ready, and stays alive."""
    with client(server) as c:
        routed = c.post("/v1/route", json={"prompt": "hello"})
        assert routed.status_code == 503 and reason in routed.json()["detail"], routed.text
        assert routed.headers["retry-after"]
        graded_now = c.post("/v1/feedback", json={"decision_id": graded, "quality": 1.0})
        assert graded_now.status_code == 503 and reason in graded_now.json()["detail"], graded_now.text
        chat = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 503 and reason in chat.json()["error"]["message"]
    ready = server.get("/readyz")
    assert ready.status_code == 503 and reason in ready.json()["reason"]
    health = server.health()
    assert health["status"] == "degraded" and reason in health["fault"]


def assert_recovered(server: Server, graded: str) -> None:
    assert server.get("/readyz").status_code == 200
    with client(server) as c:
        assert c.post("/v1/route", json={"prompt": "hello again"}).status_code == 200
        assert c.post("/v1/feedback", json={"decision_id": graded, "quality": 1.0}).status_code == 202
    assert server.health()["status"] == "ok"


def routed(server: Server) -> str:
    with client(server) as c:
        r = c.post("/v1/route", json={"prompt": "What is 2 + 2?"})
        assert r.status_code == 200
        return str(r.json()["decision_id"])


def test_database_locked_is_a_503_and_recovers(server: Server) -> None:
    decision = routed(server)
    other = sqlite3.connect(server.log, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock past the busy timeout
        assert_refused(server, "database is locked", decision)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert_recovered(server, decision)


def test_disk_full_is_a_503_naming_it_and_recovers(server: Server, disk: Path | None) -> None:
    if disk is None:
        pytest.skip("cannot mount a tmpfs here; the disk-full test needs a small real disk")
    decision = routed(server)
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()
    try:
        with client(server) as c:  # the log may still have room in blocks it holds; it is refused within a few writes
            statuses = [c.post("/v1/route", json={"prompt": f"fill {i}"}).status_code for i in range(40)]
        assert 500 not in statuses and 503 in statuses, statuses
        assert_refused(server, "full", decision)
    finally:
        filler.unlink()
    assert_recovered(server, decision)


# -- start-up faults ----------------------------------------------------------------------------
def one_line_refusal(code: int, stderr: str, *expected: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr, stderr[-2000:]
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: serve: cannot start:"), last
    for text in expected:
        assert text in last, last


@pytest.mark.slow
def test_a_read_only_log_folder_at_start_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, policy_artifact: PolicyArtifact, upstream: FakeUpstream
) -> None:
    if not mount_tmpfs(tmp_path / "ro", "ro"):
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        uri, _ = champion(tmp_path, policy_artifact)
        log = tmp_path / "ro" / "serve" / "decisions.sqlite"
        config = write_config(tmp_path / "serve.toml", home=tmp_path, upstream=upstream.url, models={}, log=log)
        code, stderr = ServerProcess(config, tmp_path, uri).fails_to_start()
    finally:
        unmount(tmp_path / "ro")
    one_line_refusal(code, stderr, "decision log", "Read-only file system")


@pytest.mark.slow
def test_a_champion_whose_artifacts_were_deleted_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, policy_artifact: PolicyArtifact, upstream: FakeUpstream
) -> None:
    uri, _ = champion(tmp_path, policy_artifact)
    shutil.rmtree(tmp_path / "mlartifacts")
    config = write_config(tmp_path / "serve.toml", home=tmp_path, upstream=upstream.url, models={})
    code, stderr = ServerProcess(config, tmp_path, uri).fails_to_start()
    one_line_refusal(code, stderr, "policy 'champion'")
