"""The chat flow's steps that need no server: the fallback order, the cost weight from the body or the header, the
conversation's cap."""

from __future__ import annotations

import pytest

from router_ml.decision_log import DecisionRecord
from serve.bodies import MAX_PROMPT_CHARS, ChatMessage, ChatRequest
from serve.chat import ChatFlow, ChatRefused, fallback_order


def record(model: str, distribution: dict[str, float]) -> DecisionRecord:
    return DecisionRecord(
        decision_id="d",
        created_at=0.0,
        tenant="t",
        prompt="p",
        model=model,
        propensity=distribution[model],
        candidates=tuple(distribution),
        distribution=distribution,
        lam=0.05,
        policy_version="1",
        est_cost_usd=0.0,
    )


def test_the_sampled_model_is_tried_first_then_the_rest_most_likely_first() -> None:
    # an explored pick: the sampled model is not the most likely one, and is still tried first (its answer is the one
    # whose propensity was logged); ties keep the catalog order
    explored = record("c", {"a": 0.3, "b": 0.5, "c": 0.1, "d": 0.1})
    assert fallback_order(explored) == ["c", "b", "a", "d"]
    assert fallback_order(record("b", {"a": 0.3, "b": 0.5, "c": 0.2})) == ["b", "a", "c"]
    assert fallback_order(record("a", {"a": 1.0})) == ["a"]


def test_the_cost_weight_comes_from_the_body_else_the_header() -> None:
    assert ChatFlow.cost_weight(0.5, "2") == 0.5
    assert ChatFlow.cost_weight(None, "2") == 2.0
    assert ChatFlow.cost_weight(None, None) is None
    for bad in ("x", "-1", "nan", "1e308"):
        with pytest.raises(ChatRefused, match="x-router-lambda") as refused:
            ChatFlow.cost_weight(None, bad)
        assert refused.value.status == 422 and refused.value.kind == "invalid_request_error"


def test_a_conversation_over_the_cap_is_refused_naming_messages() -> None:
    short = ChatRequest(model="router", messages=[ChatMessage(role="user", content="hi")])
    assert ChatFlow.conversation(short) == "user: hi"
    long = ChatRequest(model="router", messages=[ChatMessage(role="user", content="x" * MAX_PROMPT_CHARS)])
    with pytest.raises(ChatRefused, match="'messages'"):
        ChatFlow.conversation(long)
