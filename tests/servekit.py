"""Test kit for the service: a fake OpenAI-compatible upstream on 127.0.0.1, and `router-ml serve` as a real process.

The fake upstream answers by the model name it receives: ``<behaviour>-<anything>``, where behaviour is
``ok`` (a JSON answer with usage), ``fail`` (HTTP 500), ``slow`` (sleeps past the router's first-byte
timeout) or ``stream`` semantics follow the request's own ``stream`` flag.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "test-key-123"
MODELS = ["gemini-1.5-flash", "gemini-1.5-pro", "gpt-4o", "llama-3.1-8b-instruct"]
SLOW_SECONDS = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = str(body.get("model", ""))
    request.app.state.calls.append(model)
    behaviour = model.split("-", 1)[0]
    if behaviour == "fail":
        return JSONResponse({"error": {"message": "internal failure"}}, status_code=500)
    if behaviour == "slow":
        await asyncio.sleep(SLOW_SECONDS)
    text = f"answer from {model}"
    if body.get("stream"):

        async def events() -> AsyncIterator[bytes]:
            for word in text.split():
                chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": word + " "}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0.01)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                yield f"data: {json.dumps({'model': model, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }
    )


class FakeUpstream:
    """A real HTTP server on 127.0.0.1 in a background thread."""

    def __init__(self) -> None:
        app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
        app.state.calls = []
        self.calls: list[str] = app.state.calls
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def write_config(path: Path, *, home: Path, upstream: str, models: dict[str, str], extra: str = "") -> Path:
    """A service TOML: catalog models mapped to fake-upstream behaviours (``ok-...``, ``fail-...``)."""
    lines = [
        "[policy]",
        'ref = "champion"',
        "[log]",
        f'path = "{home / "serve" / "decisions.sqlite"}"',
        'durability = "full"',
        "[upstream]",
        f'endpoint = "{upstream}"',
        "first_byte_timeout_seconds = 1.0",
        "connect_timeout_seconds = 1.0",
        "max_attempts = 4",
    ]
    for name, behaviour in models.items():
        lines += [f'[upstream.models."{name}"]', f'upstream_model = "{behaviour}-{name}"']
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


class ServerProcess:
    """`router-ml serve` in its own process on a free loopback port."""

    def __init__(self, config: Path, home: Path, tracking_uri: str) -> None:
        self.config, self.home, self.tracking_uri = config, home, tracking_uri
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        env = {
            **os.environ,
            "ROUTER_ML_HOME": str(self.home),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "ROUTER_ML_API_KEYS": f"other-key,{API_KEY}",
        }
        cmd = [sys.executable, "-m", "router_ml.cli", "serve", "--config", str(self.config), "--port", str(self.port)]
        with open(self.home / "serve.err", "ab") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / 'serve.err').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """kill -9."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(config: Path, home: Path, tracking_uri: str) -> Iterator[ServerProcess]:
    server = ServerProcess(config, home, tracking_uri).start()
    try:
        yield server
    finally:
        server.stop()


def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30.0)
