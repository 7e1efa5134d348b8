"""What a client or an upstream controls cannot poison the model, hide a failure or get a 5xx (issue 11).

The service over real HTTP on 127.0.0.1 (served in this process: nothing here tests start-up), a real MLflow store
and policy, and the fake upstream told to misbehave per test (cut, stall, end early, NaN / infinite / negative
usage); clients are httpx, raw sockets and the official OpenAI SDK.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openai import OpenAI
from schemathesis.checks import not_a_server_error

from router_ml.catalog import Catalog
from tests.servekit import (
    ADMIN_KEY,
    API_KEY,
    BODY_TIMEOUT,
    TEAM_B_KEY,
    FakeUpstream,
    Server,
    client,
    decision_row,
)


@pytest.fixture
def server(hardened: Server) -> Server:
    return hardened


@pytest.fixture
def misbehaving(upstream: FakeUpstream) -> Iterator[dict[str, str]]:
    """Tell the fake upstream how to misbehave for gpt-4o (``{"ok-gpt-4o": "cut"}``); reset after the test."""
    yield upstream.commands
    upstream.commands.clear()


def sdk(server: Server, key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": "router", "messages": [{"role": "user", "content": "What is 2 + 2?"}], **extra}


def gpt4o_cost(input_tokens: int, output_tokens: int) -> float:
    from router_ml import settings

    return Catalog.load(settings.default_catalog()).spec("gpt-4o").cost_usd(input_tokens, output_tokens)


def wait_for_row(server: Server, decision_id: str, column: str, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        row = decision_row(server, decision_id)
        if row[column] not in (None, "forwarding") or time.monotonic() > deadline:
            return row
        time.sleep(0.1)


# -- keys and tenants ---------------------------------------------------------------------------
def test_a_key_acts_for_its_own_tenant_and_grades_only_its_decisions(server: Server) -> None:
    with client(server) as a, client(server, TEAM_B_KEY) as b, client(server, ADMIN_KEY) as admin:
        r = a.post("/v1/route", json={"prompt": "hello", "tenant": "team-b"})
        assert r.status_code == 403 and "tenant" in r.text
        decision = a.post("/v1/route", json={"prompt": "hello", "tenant": "team-a"}).json()["decision_id"]
        assert decision_row(server, decision)["tenant"] == "team-a"
        untagged = a.post("/v1/route", json={"prompt": "hello"}).json()["decision_id"]
        assert decision_row(server, untagged)["tenant"] == "team-a"

        # another tenant's key cannot grade it, and cannot tell it from an unknown id
        theirs = b.post("/v1/feedback", json={"decision_id": decision, "quality": 0.0})
        unknown = b.post("/v1/feedback", json={"decision_id": "f" * 32, "quality": 0.0})
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["detail"].replace(decision, "ID") == unknown.json()["detail"].replace("f" * 32, "ID")
        assert decision_row(server, decision)["quality"] is None
        assert a.post("/v1/feedback", json={"decision_id": decision, "quality": 1.0}).status_code == 202

        # the admin key sees every tenant's spend and the metrics, and neither routes nor grades
        assert admin.post("/v1/route", json={"prompt": "hello"}).status_code == 403
        assert admin.post("/v1/feedback", json={"decision_id": untagged, "quality": 1.0}).status_code == 403
        assert "team-a" in admin.get("/v1/spend").json()["by_tenant"]
        assert a.get("/metrics").status_code == 403 and admin.get("/metrics").status_code == 200
        mine = a.get("/v1/spend").json()
        assert mine["tenant"] == "team-a" and "by_tenant" not in mine
        assert b.get("/v1/spend").json()["by_model"] == {}

        # the spec is for admins only; the interactive docs are not served
        assert server.get("/openapi.json").status_code == 401
        assert a.get("/openapi.json").status_code == 403 and admin.get("/openapi.json").status_code == 200
        assert a.get("/docs").status_code == 404 and a.get("/redoc").status_code == 404


def test_a_client_cost_is_taken_only_for_route_only_decisions_and_within_the_model_price(
    server: Server,
) -> None:
    with client(server) as c, client(server, ADMIN_KEY) as admin:
        routed = c.post("/v1/route", json={"prompt": "What is 2 + 2?", "candidates": ["gpt-4o"]}).json()
        before = admin.get("/v1/spend").json()["by_source"].get("client", 0.0)
        r = c.post("/v1/feedback", json={"decision_id": routed["decision_id"], "quality": 1.0, "cost_usd": 1e6})
        assert r.status_code == 422 and "cost_usd" in r.text and "gpt-4o" in r.text
        assert decision_row(server, routed["decision_id"])["quality"] is None, "a refused grade wrote nothing"
        assert admin.get("/v1/spend").json()["by_source"].get("client", 0.0) == before
        # within the bound (the prompt's bytes as tokens and the completion cap): accepted, recorded as the client's
        r = c.post("/v1/feedback", json={"decision_id": routed["decision_id"], "quality": 1.0, "cost_usd": 0.002})
        assert r.status_code == 202
        row = decision_row(server, routed["decision_id"])
        assert row["client_cost_usd"] == 0.002 and row["cost_usd"] is None
        assert admin.get("/v1/spend").json()["by_source"]["client"] == pytest.approx(before + 0.002)

        # a forwarded call: its metered cost is what counts; a client cost is refused, a plain grade taken
        answer = c.post("/v1/chat/completions", json=chat_body(router_candidates=["gpt-4o"]))
        decision = answer.headers["x-router-decision-id"]
        r = c.post("/v1/feedback", json={"decision_id": decision, "quality": 1.0, "cost_usd": 0.0})
        assert r.status_code == 422 and "metered" in r.text
        assert c.post("/v1/feedback", json={"decision_id": decision, "quality": 1.0}).status_code == 202
        row = decision_row(server, decision)
        assert row["cost_usd"] == pytest.approx(gpt4o_cost(11, 7)) and row["client_cost_usd"] is None


# -- streams ------------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour", ["cut", "stall", "nodone"])
def test_a_stream_that_breaks_after_the_first_byte_raises_in_the_sdk_and_is_logged_as_cut(
    server: Server, misbehaving: dict[str, str], behaviour: str
) -> None:
    misbehaving["ok-gpt-4o"] = behaviour
    raw = sdk(server).chat.completions.with_raw_response.create(
        model="router",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"router_candidates": ["gpt-4o"]},
    )
    decision = raw.headers["x-router-decision-id"]
    pieces: list[str] = []
    with pytest.raises(openai.APIError, match="incomplete"):
        for chunk in raw.parse():
            pieces.append(chunk.choices[0].delta.content or "")
    assert pieces == ["answer ", "from "] if behaviour != "nodone" else len(pieces) == 3
    row = wait_for_row(server, decision, "outcome")
    assert row["outcome"] == "cut" and row["answered_by"] == "gpt-4o"
    assert 0 < row["cost_usd"] < gpt4o_cost(100, 100)  # type: ignore[operator]


def test_a_stream_names_the_catalog_model_and_sends_usage_only_when_asked(server: Server) -> None:
    client_ = sdk(server)
    plain = client_.chat.completions.create(
        model="router", messages=[{"role": "user", "content": "hi"}], extra_body={"router_candidates": ["gpt-4o"]}
    )
    assert plain.model == "gpt-4o"
    stream = client_.chat.completions.create(
        model="router",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"router_candidates": ["gpt-4o"]},
    )
    chunks = list(stream)
    # the loop of OpenAI's own documentation works: every chunk has a choice; none carries usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "answer from ok-gpt-4o"
    assert {c.model for c in chunks} == {plain.model}
    assert all(c.usage is None for c in chunks)
    asked = list(
        client_.chat.completions.create(
            model="router",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"router_candidates": ["gpt-4o"]},
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.completion_tokens == 7
    assert {c.model for c in asked} == {"gpt-4o"}


def test_a_client_that_leaves_mid_stream_still_leaves_the_model_cost_and_state(
    server: Server, misbehaving: dict[str, str]
) -> None:
    misbehaving["ok-gpt-4o"] = "long"  # 200 chunks, 20 ms apart
    with (
        client(server) as c,
        c.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, router_candidates=["gpt-4o"])) as r,
    ):
        decision = r.headers["x-router-decision-id"]
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(10)]
        assert any(line.startswith("data: ") for line in seen)
    row = wait_for_row(server, decision, "outcome")
    assert row["outcome"] == "disconnected" and row["answered_by"] == "gpt-4o"
    assert row["output_tokens"] is not None and 0 < row["output_tokens"] < 200  # type: ignore[operator]
    assert row["cost_usd"] == pytest.approx(gpt4o_cost(row["input_tokens"], row["output_tokens"]))  # type: ignore[arg-type]


# -- input the client or the upstream controls: 4xx or a fallback, never a 5xx -------------------
def test_client_input_gets_a_4xx_naming_the_field(server: Server) -> None:
    with client(server) as c:
        surrogate = b'{"model": "router", "messages": [{"role": "user", "content": "a\\udfff"}]}'
        r = c.post("/v1/chat/completions", content=surrogate, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "messages.0.content" in r.text
        key = b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "x\\udfff": 1}'
        r = c.post("/v1/chat/completions", content=key, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "Unicode" in r.text
        nan = b'{"model": "router", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
        r = c.post("/v1/chat/completions", content=nan, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "temperature" in r.text
        r = c.post("/v1/chat/completions", json=chat_body(router_candidates=["gpt-4o", "no-such-model"]))
        assert r.status_code == 422 and "router_candidates" in r.text and "no-such-model" in r.text
        for bad in ("1e308", "-1", "nan", "x"):
            r = c.post("/v1/chat/completions", json=chat_body(), headers={"x-router-lambda": bad})
            assert r.status_code == 422 and "x-router-lambda" in r.text, bad
        assert c.post("/v1/chat/completions", json=chat_body(), headers={"x-router-lambda": "2"}).status_code == 200
        long = {"model": "router", "messages": [{"role": "user", "content": "x" * 200_001}]}
        r = c.post("/v1/chat/completions", json=long)
        assert r.status_code == 422 and "messages" in r.text and "200000" in r.text


@pytest.mark.parametrize("behaviour", ["nan", "inf", "neg"])
def test_upstream_usage_that_is_not_a_token_count_falls_back_and_never_costs_less_than_zero(
    server: Server, misbehaving: dict[str, str], behaviour: str
) -> None:
    misbehaving["ok-gpt-4o"] = behaviour
    with client(server) as c:
        body = chat_body(router_candidates=["gpt-4o", "llama-3.1-8b-instruct"], router_lambda=0.0)
        for _ in range(4):  # whichever model is sampled, the answer comes from a model with a real count
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert r.headers["x-router-model"] == "llama-3.1-8b-instruct"
            assert float(r.headers["x-router-cost-usd"]) > 0
        r = c.post("/v1/chat/completions", json=chat_body(router_candidates=["gpt-4o"]))
        reason = "answer's usage is not a count of tokens" if behaviour == "neg" else "answer is not JSON"  # NaN isn't
        assert r.status_code == 502 and f"gpt-4o: {reason}" in r.text
        assert decision_row(server, r.headers["x-router-decision-id"])["outcome"] == "failed"
        # streamed, the usage arrives after the answer: a count that is not JSON (NaN) is a broken stream, reported
        # and recorded as cut; a negative count is not believed. Either way the cost is estimated from the text.
        streamed = c.post("/v1/chat/completions", json=chat_body(stream=True, router_candidates=["gpt-4o"]))
        assert streamed.status_code == 200
        assert ("[DONE]" in streamed.text) == (behaviour == "neg")
        row = wait_for_row(server, streamed.headers["x-router-decision-id"], "outcome")
        assert row["outcome"] == ("answered" if behaviour == "neg" else "cut")
        assert row["output_tokens"] == round(len("answer from ok-gpt-4o ") / 4)  # estimated, not the upstream's 7
        assert row["cost_usd"] == pytest.approx(gpt4o_cost(row["input_tokens"], row["output_tokens"]))  # type: ignore[arg-type]


def test_a_body_that_never_arrives_is_a_408_not_a_hang(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/route HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {API_KEY}\r\ncontent-length: 100\r\n\r\n".encode()
            + b'{"prompt":'
        )
        start = time.monotonic()
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert time.monotonic() - start < BODY_TIMEOUT + 5


def test_metrics_do_not_grow_with_what_clients_send(server: Server) -> None:
    def series(text: str) -> set[str]:
        return {re.sub(r" [-+0-9.e]+$", "", line) for line in text.splitlines() if not line.startswith("#")}

    with client(server) as c, client(server, ADMIN_KEY) as admin:
        c.post("/v1/chat/completions", json=chat_body(user="warm-up"))
        before = series(admin.get("/metrics").text)
        for i in range(40):
            assert c.post("/v1/chat/completions", json=chat_body(user=f"user-{i}")).status_code == 200
        after = series(admin.get("/metrics").text)
    assert not any("user-" in s for s in after)
    assert after - before <= {s for s in after if 'model="' in s}, after - before  # at most newly chosen models


# -- the spec, fuzzed ---------------------------------------------------------------------------
def test_schemathesis_finds_no_5xx_on_any_operation(server: Server) -> None:
    """Cases generated from the served OpenAPI spec, a bounded number per operation, sent with a tenant's key."""
    spec = server.get("/openapi.json", ADMIN_KEY).json()
    results = schemathesis.openapi.from_dict(spec).get_all_operations()
    operations = [result.ok() for result in results]
    assert {op.path for op in operations} >= {"/v1/route", "/v1/feedback", "/v1/chat/completions", "/readyz"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}, checks=[not_a_server_error]
            )

        no_5xx()
