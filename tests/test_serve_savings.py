"""Savings on live traffic, the quality floor and calibrated operating points, over real HTTP (the
service in this process; its start-up refusals through `router-ml serve`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_ml.artifacts import PolicyArtifact
from router_ml.contracts import load_benchmark
from router_ml.fullinfo import FullInfo
from router_ml.operating import Arm, OperatingPoint
from tests.servekit import (
    ADMIN_KEY,
    API_KEY,
    MODELS,
    FakeUpstream,
    InProcessServer,
    Server,
    champion,
    client,
    wait_until,
    write_config,
)

REFERENCE = "gpt-4o"
FLOOR = """[savings]
reference = "gpt-4o"
[target]
quality_floor = 0.05
floor_step = 0.5
floor_min_graded = 20
floor_every = 10
"""


def _savings(server: Server) -> dict[str, object]:
    r = server.get("/v1/savings", ADMIN_KEY)
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()
    return data


@pytest.mark.slow
def test_savings_floor_and_a_calibrated_mixture_over_http(
    tmp_path: Path, policy_artifact: PolicyArtifact, upstream: FakeUpstream, small_benchmark: Path
) -> None:
    """A policy calibrated to half "router at a steep cost weight", half "always gpt-4o" is served as that mixture.
    Grades say gpt-4o is right and every other model wrong, so the router trails the reference by about half a
    point of quality: the live estimate says so with an interval that holds the truth, the quality floor (tolerance
    0.05) moves the cost weight toward quality, and the estimate survives a restart, each grade counted once."""
    point = OperatingPoint((Arm(lam=5.0), Arm(model=REFERENCE)), (0.5, 0.5))
    served = PolicyArtifact(policy_artifact.policy.at(point), embedder=policy_artifact.embedder)
    home = tmp_path / "home"
    home.mkdir()
    uri, _ = champion(home, served)
    config = write_config(
        home / "serve.toml", home=home, upstream=upstream.url, models=dict.fromkeys(MODELS, "ok"), extra=FLOOR
    )
    prompts = FullInfo.from_benchmark(load_benchmark(small_benchmark)).prompts[:80]
    server = InProcessServer(config, home, uri).start()
    try:
        with client(server) as c:
            decisions = []
            for p in prompts:  # steady traffic: each answer graded as it comes, the floor checked as decisions go
                d = c.post("/v1/route", json={"prompt": p}).json()
                assert d["distribution"].get(REFERENCE, 0.0) >= 0.5 - 1e-6, "the calibrated mixture is served"
                quality = 1.0 if d["model"] == REFERENCE else 0.0
                assert (
                    c.post("/v1/feedback", json={"decision_id": d["decision_id"], "quality": quality}).status_code
                    == 202
                )
                decisions.append(d)
            early = np.mean([d["distribution"].get(REFERENCE, 0.0) for d in decisions[:10]])
            wait_until(lambda: server.applied() >= len(decisions), what="the grades learned")
            report = _savings(server)
            assert report["reference"] == REFERENCE and report["graded_decisions"] == len(decisions)
            router_q = np.mean([d["model"] == REFERENCE for d in decisions])
            diff = report["quality_diff"]
            assert diff["low"] <= router_q - 1.0 <= diff["high"], (diff, router_q)  # type: ignore[index]
            assert report["router_quality"]["value"] == pytest.approx(router_q)  # type: ignore[index]
            assert report["quality_diff"]["high"] < -0.05  # type: ignore[index]
            # the floor has acted: the cost weight moved toward quality, and the router arm with it
            assert report["floor_factor"] < 1.0  # type: ignore[operator]
            assert report["lambda"] < served.policy.config.lam  # type: ignore[operator]
            later = [c.post("/v1/route", json={"prompt": p}).json() for p in prompts[:30]]
            assert np.mean([d["distribution"].get(REFERENCE, 0.0) for d in later]) > early + 0.1
            metrics = server.get("/metrics", ADMIN_KEY).text
            assert 'router_savings{bound="high",figure="quality_diff"}' in metrics
            assert f"router_savings_graded {float(len(decisions))}" in metrics
            assert "router_quality_floor_factor" in metrics
            # a tenant's key may not read the operator's figures
            assert server.get("/v1/savings", API_KEY).status_code == 403
    finally:
        server.stop()
    # a restart rebuilds the estimate from the log: every grade counted once
    again = InProcessServer(config, home, uri).start()
    try:
        assert _savings(again)["graded_decisions"] == len(decisions)
    finally:
        again.stop()


@pytest.mark.slow
def test_a_bad_savings_or_target_section_is_one_line_naming_the_field(
    tmp_path: Path, policy_artifact: PolicyArtifact, upstream: FakeUpstream
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    uri, _ = champion(home, policy_artifact)
    for extra, field in (
        ('[savings]\nreference = "no-such-model"\n', "savings.reference"),
        ("[target]\nquality_floor = -1\n", "target.quality_floor"),
        ("[target]\nquality_floor = 0.01\nfloor_step = 1.5\n", "target.floor_step"),
    ):
        config = write_config(
            home / "serve.toml", home=home, upstream=upstream.url, models=dict.fromkeys(MODELS, "ok"), extra=extra
        )
        code, err = InProcessServer(config, home, uri).fails_to_start()
        assert code == 2 and field in err, (extra, err)
