"""kill -9 of the service during a feedback load: after a restart every acknowledged decision and feedback is in
the log, and the restarted policy has learned every logged feedback (it replays what came after its version)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import polars as pl
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.contracts import load_benchmark
from router_ml.decision_log import DecisionLog
from router_ml.fullinfo import FullInfo
from tests.servekit import API_KEY, FakeUpstream, ServerProcess, champion, write_config


@pytest.mark.slow
def test_kill_9_during_feedback_load_loses_nothing_acknowledged(
    tmp_path: Path,
    policy_artifact: PolicyArtifact,
    small_benchmark: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    uri, _ = champion(home, policy_artifact)
    prompts = FullInfo.from_benchmark(load_benchmark(small_benchmark)).prompts[:30]
    with FakeUpstream() as upstream:
        # no snapshot before the kill: the restart must recover the updates from the log alone
        extra = "[learning]\nsnapshot_every_updates = 1000000\n"
        config = write_config(home / "serve.toml", home=home, upstream=upstream.url, models={}, extra=extra)
        server = ServerProcess(config, home, uri).start()
        routed: list[str] = []
        graded: list[str] = []
        stop = threading.Event()

        def load(k: int) -> None:
            with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.post("/v1/route", json={"prompt": prompts[(k + i) % len(prompts)]}, timeout=10)
                        if r.status_code == 200:
                            routed.append(r.json()["decision_id"])
                            f = c.post(
                                "/v1/feedback",
                                json={"decision_id": r.json()["decision_id"], "quality": 1.0},
                                timeout=10,
                            )
                            if f.status_code == 202:
                                graded.append(r.json()["decision_id"])
                    except httpx.HTTPError:
                        return  # the server is gone
                    i += 1

        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        # kill once a good amount of feedback has been acknowledged, while the load is still running
        deadline = threading.Event()
        while len(graded) < 60 and not deadline.wait(0.1):
            pass
        server.kill()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert len(graded) >= 60

        log = DecisionLog(home / "serve" / "decisions.sqlite")
        frame = log.to_frame(include_fallback=True)
        log.close()
        assert set(routed) <= set(frame["event_id"]), "an acknowledged decision was lost"
        done = set(frame.filter(pl.col("quality").is_not_null())["event_id"])
        assert set(graded) <= done, "an acknowledged feedback was lost"

        restarted = ServerProcess(config, home, uri).start()
        try:
            health = restarted.health()
            # the policy was rebuilt from version 1 plus every feedback in the log, exactly once each
            assert health["feedback_applied"] == len(done)
            assert health["policy_version"] == f"1+{len(done)}"
            assert health["log"]["feedback"] == len(done)
        finally:
            restarted.stop()
