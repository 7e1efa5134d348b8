"""The service over real HTTP on 127.0.0.1 (served in this process), a real MLflow store, a real policy,
and a fake OpenAI-compatible upstream that answers, fails, stalls and streams."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from router_ml import settings as rm_settings
from router_ml.artifacts import PolicyArtifact
from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark, load_logs
from router_ml.fullinfo import FullInfo
from router_ml.registry import PolicyRegistry
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

SNAPSHOT_EVERY = 20


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, policy_artifact: PolicyArtifact, upstream: FakeUpstream
) -> Iterator[tuple[Server, PolicyRegistry]]:
    home = tmp_path_factory.mktemp("serve-home")
    uri, registry = champion(home, policy_artifact)
    behaviours = {"gpt-4o": "ok", "gemini-1.5-pro": "slow", "gemini-1.5-flash": "fail", "llama-3.1-8b-instruct": "ok"}
    extra = f"[learning]\nsnapshot_every_updates = {SNAPSHOT_EVERY}\nreload_poll_seconds = 1.0\n"
    config = write_config(home / "serve.toml", home=home, upstream=upstream.url, models=behaviours, extra=extra)
    server = InProcessServer(config, home, uri).start()
    try:
        yield server, registry
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prompts(small_benchmark: Path) -> list[str]:
    return FullInfo.from_benchmark(load_benchmark(small_benchmark)).prompts[:40]


def test_every_endpoint_but_healthz_needs_a_bearer_key(stack: tuple[Server, PolicyRegistry]) -> None:
    server, _ = stack
    assert server.get("/healthz").status_code == 200
    calls = [
        ("POST", "/v1/route", {"prompt": "hi"}),
        ("POST", "/v1/feedback", {"decision_id": "x", "quality": 1}),
        ("POST", "/v1/chat/completions", {"model": "router", "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/spend", None),
        ("GET", "/metrics", None),
    ]
    with httpx.Client(base_url=server.url) as anyone:
        for method, path, body in calls:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {API_KEY}"}):
                r = anyone.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code)
                assert API_KEY not in r.text and "other-key" not in r.text
    # the spec and the interactive docs are off by default, whatever the key
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert server.get(path, ADMIN_KEY).status_code == 404
    # the second configured key works too
    with client(server, "other-key") as other:
        r = other.post("/v1/route", json={"prompt": "hi"})
    assert r.status_code == 200


def test_route_feedback_learns_online_and_snapshots_a_version(
    stack: tuple[Server, PolicyRegistry], prompts: list[str]
) -> None:
    server, registry = stack
    start = server.applied()
    with client(server) as c:
        decisions = []
        for p in prompts[:SNAPSHOT_EVERY]:
            r = c.post("/v1/route", json={"prompt": p, "tenant": "team-a"})
            assert r.status_code == 200, r.text
            d = r.json()
            assert d["model"] in MODELS
            assert d["probability"] == pytest.approx(d["distribution"][d["model"]])
            assert sum(d["distribution"].values()) == pytest.approx(1.0, abs=1e-5)
            assert d["lambda"] == pytest.approx(0.05)
            decisions.append(d)
        # a subset of candidates is respected
        r = c.post("/v1/route", json={"prompt": prompts[0], "candidates": ["gpt-4o", "gemini-1.5-flash"]})
        assert set(r.json()["distribution"]) <= {"gpt-4o", "gemini-1.5-flash"}
        for i, d in enumerate(decisions):
            r = c.post("/v1/feedback", json={"decision_id": d["decision_id"], "quality": float(i % 2)})
            assert r.status_code == 202, r.text
        wait_until(lambda: server.applied() == start + SNAPSHOT_EVERY, what="the grades learned")
        # refused feedback changes nothing
        assert c.post("/v1/feedback", json={"decision_id": "nope", "quality": 1}).status_code == 404
        r = c.post("/v1/feedback", json={"decision_id": decisions[0]["decision_id"], "quality": 1})
        assert r.status_code == 409
        r = c.post("/v1/feedback", json={"decision_id": decisions[0]["decision_id"], "quality": 1.5})
        assert r.status_code == 422 and "quality" in r.text
        time.sleep(0.5)
        assert server.applied() == start + SNAPSHOT_EVERY

    # the learner registered a snapshot: tagged online, with its parent and the feedback it holds
    wait_until(lambda: registry.newest({"source": "online"}) is not None, what="an online snapshot")
    snap = registry.newest({"source": "online"})
    assert snap is not None
    assert snap.tags["parent_version"] == "1" and snap.tags["base_version"] == "1"
    assert int(snap.tags["feedback_seq"]) >= SNAPSHOT_EVERY
    wait_until(lambda: str(server.health()["policy_version"]).split("+")[0] == snap.version)
    # the snapshot is a loadable policy
    artifact, _ = registry.load(snap.version)
    assert artifact.policy.updates >= SNAPSHOT_EVERY


def test_bad_input_gets_a_4xx_naming_the_field(stack: tuple[Server, PolicyRegistry]) -> None:
    server, _ = stack
    before = server.health()
    with client(server) as c:
        r = c.post("/v1/route", json={"prompt": "x", "candidates": ["no-such-model"]})
        assert r.status_code == 422 and "candidates" in r.text
        r = c.post("/v1/route", json={"prompt": "   "})
        assert r.status_code == 422 and "prompt" in r.text
        r = c.post("/v1/route", json={"prompt": "x", "lambda": -1})
        assert r.status_code == 422 and "lambda" in r.text
        r = c.post("/v1/route", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = c.post("/v1/route", json={"prompt": "x" * (2 << 20)})
        assert r.status_code == 413
        r = c.post("/v1/feedback", json={"decision_id": "abc", "quality": "good"})
        assert r.status_code == 422 and "quality" in r.text
    after = server.health()
    assert after["feedback_applied"] == before["feedback_applied"]


def test_openai_sdk_through_the_router_with_fallback_and_streaming(
    stack: tuple[Server, PolicyRegistry], upstream: FakeUpstream
) -> None:
    server, _ = stack
    sdk = OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 2 + 2?"}]
    # gpt-4o and llama answer; gemini-1.5-flash fails with 500 and gemini-1.5-pro stalls past the timeout
    raw = sdk.chat.completions.with_raw_response.create(
        model="router", messages=messages, extra_body={"router_candidates": ["gpt-4o", "llama-3.1-8b-instruct"]}
    )
    completion = raw.parse()
    answered = raw.headers["x-router-model"]
    assert completion.model == answered and answered in ("gpt-4o", "llama-3.1-8b-instruct")
    assert completion.choices[0].message.content == f"answer from ok-{answered}"
    spec = Catalog.load(rm_settings.default_catalog()).spec(answered)
    assert float(raw.headers["x-router-cost-usd"]) == pytest.approx(spec.cost_usd(11, 7), rel=1e-6)
    decision_id = raw.headers["x-router-decision-id"]
    with client(server) as c:
        assert c.post("/v1/feedback", json={"decision_id": decision_id, "quality": 1.0}).status_code == 202

    # a huge cost weight makes the broken, cheaper model the choice; gpt-4o, next in the ranking, answers
    for broken, behaviour in (("gemini-1.5-flash", "fail"), ("gemini-1.5-pro", "slow")):
        for _ in range(3):
            start = time.perf_counter()
            raw = sdk.chat.completions.with_raw_response.create(
                model="router",
                messages=messages,
                extra_body={"router_candidates": [broken, "gpt-4o"], "router_lambda": 1000.0},
            )
            assert raw.headers["x-router-chosen"] == broken
            assert raw.headers["x-router-model"] == "gpt-4o"
            assert raw.headers["x-router-fallbacks"] == "1"
            assert upstream.calls[-2:] == [f"{behaviour}-{broken}", "ok-gpt-4o"]
            if behaviour == "slow":
                assert time.perf_counter() - start >= 1.0

    # streaming passes server-sent events through, names the model in a header, and meters usage
    stream = sdk.chat.completions.create(
        model="router",
        messages=messages,
        stream=True,
        extra_body={"router_candidates": ["gemini-1.5-flash", "gpt-4o"], "router_lambda": 1000.0},
    )
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(pieces).strip() == "answer from ok-gpt-4o"
    assert upstream.calls[-2:] == ["fail-gemini-1.5-flash", "ok-gpt-4o"]
    with client(server) as c:
        spend = c.get("/v1/spend").json()
        assert spend["tenant"] == "team-a" and spend["by_model"]["gpt-4o"] > 0
    with client(server, ADMIN_KEY) as c:
        metrics = c.get("/metrics").text
    assert 'router_choices_total{model="' in metrics
    assert "router_request_seconds_bucket" in metrics and "router_spend_usd_total" in metrics
    assert "router_feedback_lag_seconds" in metrics


def test_all_upstreams_failing_is_a_502_without_secrets(stack: tuple[Server, PolicyRegistry]) -> None:
    server, _ = stack
    with client(server) as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": "router",
                "messages": [{"role": "user", "content": "hello"}],
                "router_candidates": ["gemini-1.5-flash"],
            },
        )
    assert r.status_code == 502
    assert "gemini-1.5-flash: HTTP 500" in r.json()["error"]["message"]
    assert API_KEY not in r.text


@pytest.mark.slow
def test_eight_clients_every_feedback_applied_exactly_once(
    stack: tuple[Server, PolicyRegistry], prompts: list[str]
) -> None:
    server, _ = stack
    start = server.applied()
    per_client = 130

    def work(k: int) -> int:
        errors = 0
        with client(server) as c:
            for i in range(per_client):
                r = c.post("/v1/route", json={"prompt": prompts[(k * per_client + i) % len(prompts)]})
                if r.status_code != 200:
                    errors += 1
                    continue
                f = c.post("/v1/feedback", json={"decision_id": r.json()["decision_id"], "quality": (i % 3) / 2})
                errors += f.status_code != 202
        return errors

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(work, range(8))) == 0
    wait_until(lambda: server.applied() == start + 8 * per_client, what="the grades learned")
    time.sleep(1.0)
    assert server.applied() == start + 8 * per_client


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_route = st.fixed_dictionaries(
    {},
    optional={
        "prompt": st.one_of(st.text(max_size=200), _json),
        "candidates": st.one_of(st.lists(st.sampled_from([*MODELS, "x", ""]), max_size=5), _json),
        "lambda": st.one_of(st.floats(allow_nan=True, allow_infinity=True), _json),
        "tenant": st.one_of(st.text(max_size=300), _json),
    },
)
_feedback = st.fixed_dictionaries(
    {},
    optional={
        "decision_id": st.one_of(st.text(max_size=80), _json),
        "quality": st.one_of(st.floats(allow_nan=True, allow_infinity=True), _json),
        "cost_usd": st.one_of(st.floats(allow_nan=True, allow_infinity=True), _json),
    },
)
_chat = st.fixed_dictionaries(
    {"model": st.sampled_from(["router", "gpt-4o", ""])},
    optional={
        "messages": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.text(max_size=10), "content": st.one_of(st.text(max_size=50), _json)}
                ),
                max_size=3,
            ),
            _json,
        ),
        "stream": _json,
        "router_lambda": _json,
        "router_candidates": st.one_of(st.lists(st.sampled_from([*MODELS, "x"]), max_size=3), _json),
    },
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path_body=st.one_of(
        st.tuples(st.just("/v1/route"), _route | _json),
        st.tuples(st.just("/v1/feedback"), _feedback | _json),
        st.tuples(st.just("/v1/chat/completions"), _chat | _json),
    )
)
def test_fuzzed_bodies_never_get_a_5xx(stack: tuple[Server, PolicyRegistry], path_body: tuple[str, object]) -> None:
    server, _ = stack
    path, body = path_body
    content = json.dumps(body, allow_nan=True).encode()
    r = httpx.post(
        f"{server.url}{path}",
        content=content,
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
        timeout=30,
    )
    # a chat request that reaches only the failing upstreams is a 502 by design; nothing else may be 5xx
    assert r.status_code < 500 or (path == "/v1/chat/completions" and r.status_code == 502), (body, r.text)


def test_hot_reload_when_the_champion_moves(
    stack: tuple[Server, PolicyRegistry], policy_artifact: PolicyArtifact
) -> None:
    server, registry = stack
    new = registry.log_version(policy_artifact, params={"lam": 0.05}, metrics={}, tags={"source": "batch"})
    registry.promote(new.version)
    wait_until(lambda: str(server.health()["policy_version"]).split("+")[0] == new.version, timeout=60)
    with client(server) as c:
        assert c.post("/v1/route", json={"prompt": "after the reload"}).json()["policy_version"] == new.version
    with client(server, ADMIN_KEY) as c:
        assert "router_reloads_total 1.0" in c.get("/metrics").text


def test_export_logs_is_training_data(stack: tuple[Server, PolicyRegistry], tmp_path: Path) -> None:
    from router_ml.cli import main

    server, _ = stack
    out = tmp_path / "logs.parquet"
    assert main(["export-logs", "--log", str(server.home / "serve" / "decisions.sqlite"), "-o", str(out)]) == 0
    logs = load_logs(out)
    graded = logs.filter(pl.col("quality").is_not_null())
    assert graded.height >= SNAPSHOT_EVERY + 8 * 130
    assert set(logs["model"].unique()) <= set(MODELS)
    # a key's tenant is the decision's tenant: one route was made with the default tenant's key, the rest with team-a's
    assert set(logs["tenant"].unique()) == {"team-a", "default"}
    assert logs.filter(pl.col("tenant") == "default").height == 1
