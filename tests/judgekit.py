"""Test kit for grading: a fake OpenAI-compatible upstream on 127.0.0.1 that answers prompts with a tag naming the
model and the prompt, and, asked with the judge's rubric, judges such an answer from a table of known qualities.

An answer reads ``answer [<model>|<key>]`` where ``key`` is :func:`prompt_key` of the last user message. A judge call
(a message holding ``[Request]`` and ``[Answer]``, as :data:`router_ml.graders.RUBRIC` does) finds the tag in the
answer and replies ``{"score": s, "rationale": ...}`` with ``s = 1 + round(9 * q)`` for the known quality ``q`` of
that (key, model); with probability ``error_rate`` (a seeded draw) it gives ``10 - s + 1`` instead, the opposite
verdict. ``truth`` maps ``(key, model)`` to the quality; an answer it does not know is scored 1.

``mode`` sets how the judge behaves: ``ok``; ``garbage`` (a reply with no JSON verdict); ``down`` (HTTP 500);
``ratelimit`` (HTTP 429 with ``Retry-After: 1``); ``slow`` (sleeps ``slow_seconds`` first). Answers are unaffected.
Every judge call is counted in ``judged``; usage is 100 prompt and 20 completion tokens per judge call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servekit import LoopbackServer

_TAG = re.compile(r"answer \[([^|\]]+)\|([0-9a-f]+)\]")


def prompt_key(text: str) -> str:
    """The short key of a prompt (the last user message's text) that answers carry."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def answer_text(model: str, prompt: str) -> str:
    """What the fake upstream answers ``model`` on ``prompt`` (a provider model id ``ok-<model>``, as
    :func:`tests.servekit.write_config` maps them, answers as ``<model>``)."""
    return f"answer [{model.removeprefix('ok-')}|{prompt_key(prompt)}]"


def _completion(model: str, content: str, prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FakeJudgeUpstream(LoopbackServer):
    """A real HTTP server on 127.0.0.1 in a background thread: answers, and judges answers it gave."""

    def __init__(self, *, error_rate: float = 0.0, seed: int = 0, slow_seconds: float = 3.0) -> None:
        self.truth: dict[tuple[str, str], float] = {}
        self.error_rate = error_rate
        self.mode = "ok"
        self.slow_seconds = slow_seconds
        self.judged = 0
        self.answered = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        super().__init__(Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])]),
                         "fake judge upstream")

    def score(self, key: str, model: str) -> int:
        """The verdict on an answer: the known quality on 1-10, flipped with probability ``error_rate``."""
        quality = self.truth.get((key, model), 0.0)
        score = 1 + round(9 * quality)
        with self._lock:
            flip = self._rng.random() < self.error_rate
        return 11 - score if flip else score

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model", ""))
        messages = body.get("messages") or [{}]
        text = str(messages[-1].get("content", ""))
        if "[Request]" not in text or "[Answer]" not in text:
            with self._lock:
                self.answered += 1
            return JSONResponse(_completion(model, answer_text(model, text), 11, 7))
        with self._lock:
            self.judged += 1
        if self.mode == "down":
            return JSONResponse({"error": {"message": "judge is down"}}, status_code=500)
        if self.mode == "ratelimit":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "1"})
        if self.mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if self.mode == "garbage":
            return JSONResponse(_completion(model, "I think it is quite good overall.", 100, 20))
        answer = text.split("[Answer]", 1)[1]
        found = _TAG.search(answer)
        score = self.score(found.group(2), found.group(1)) if found else 1
        verdict = json.dumps({"score": score, "rationale": "compared with the known answer"})
        return JSONResponse(_completion(model, verdict, 100, 20))
