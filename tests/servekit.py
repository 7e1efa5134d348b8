"""Test kit for the service: a fake OpenAI-compatible upstream on 127.0.0.1, and the service over real HTTP on a
loopback port, either in this process (:class:`InProcessServer`: the app on uvicorn in a thread, for tests of what it
answers) or as `router-ml serve` in its own process (:class:`ServerProcess`: for tests of start-up, exit codes, the
command line and kill -9).

The fake upstream answers by the model name it receives, ``<behaviour>-<anything>``; it streams when the request
asks. Behaviours: ``ok`` (an answer with usage), ``fail`` (HTTP 500), ``slow`` (sleeps past the router's first-byte
timeout before answering), ``cut`` (a stream that breaks off after two chunks: the connection is dropped),
``stall`` (a stream that stops sending after two chunks, past the router's read timeout), ``nodone`` (a stream
that ends cleanly without ``[DONE]``), ``long`` (a stream of 200 chunks, 20 ms apart), and ``nan``, ``inf``,
``neg`` (usage of NaN, Infinity or -5 tokens, as raw JSON constants). ``FakeUpstream.commands`` overrides the
behaviour for a model name on command.

Keys: ``API_KEY`` is tenant ``team-a``'s, ``OTHER_KEY`` the ``default`` tenant's, ``TEAM_B_KEY`` tenant ``team-b``'s
and ``ADMIN_KEY`` an admin key.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import mlflow
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router_ml.artifacts import PolicyArtifact
from router_ml.cli import main
from router_ml.registry import PolicyRegistry
from serve.app import create_app
from serve.config import ServeConfig
from serve.startup import build_service

API_KEY = "test-key-123"
OTHER_KEY = "other-key"
TEAM_B_KEY = "team-b-key"
ADMIN_KEY = "admin-key"
MODELS = ["gemini-1.5-flash", "gemini-1.5-pro", "gpt-4o", "llama-3.1-8b-instruct"]
SLOW_SECONDS = 3.0
BODY_TIMEOUT = 1.0
"""The body timeout of the trust and fault tests' server (``hardened`` in conftest)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_USAGE = {"ok": "11", "nan": "NaN", "inf": "Infinity", "neg": "-5"}


def _usage(behaviour: str) -> str:
    tokens = _USAGE.get(behaviour, "11")
    return f'{{"prompt_tokens": {tokens}, "completion_tokens": 7, "total_tokens": 18}}'


async def _chat(request: Request) -> Response:
    body = await request.json()
    model = str(body.get("model", ""))
    request.app.state.calls.append(model)
    behaviour = request.app.state.commands.get(model, model.split("-", 1)[0])
    if behaviour == "fail":
        return JSONResponse({"error": {"message": "internal failure"}}, status_code=500)
    if behaviour == "slow":
        await asyncio.sleep(SLOW_SECONDS)
    words = [f"w{i}" for i in range(200)] if behaviour == "long" else f"answer from {model}".split()
    if body.get("stream"):

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(words):
                if i == 2 and behaviour == "cut":
                    raise ConnectionResetError("the upstream dropped the connection")
                if i == 2 and behaviour == "stall":
                    await asyncio.sleep(SLOW_SECONDS)
                chunk = {"model": model, "choices": [{"index": 0, "delta": {"content": word + " "}}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0.02 if behaviour == "long" else 0.01)
            if behaviour == "nodone":
                return
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f'data: {{"model": "{model}", "choices": [], "usage": {_usage(behaviour)}}}\n\n'.encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
        ],
    }
    text = json.dumps(answer)[:-1] + f', "usage": {_usage(behaviour)}}}'
    return Response(text, media_type="application/json")


class LoopbackServer:
    """An ASGI app served by uvicorn on a free 127.0.0.1 port in a background thread, for as long as the block runs."""

    def __init__(self, app: Starlette, name: str = "loopback server") -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


class FakeUpstream(LoopbackServer):
    """The fake OpenAI-compatible upstream (behaviours in the module docstring)."""

    def __init__(self) -> None:
        app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
        app.state.calls = []
        app.state.commands = {}
        self.calls: list[str] = app.state.calls
        self.commands: dict[str, str] = app.state.commands  # e.g. {"ok-gpt-4o": "cut"}
        super().__init__(app, "fake upstream")


_EMPTY_STORE: Path | None = None
_EMPTY_STORE_LOCK = threading.Lock()


def sqlite_store(folder: Path) -> str:
    """The local MLflow store at ``folder/mlflow.db`` (where ``router-ml`` puts its default store), made empty if
    there is none; returns its tracking URI. A new store is a copy of one empty store MLflow made in this process:
    MLflow's schema migrations cost ~1 s of CPU per new store, and the suite makes dozens."""
    global _EMPTY_STORE
    target = folder / "mlflow.db"
    with _EMPTY_STORE_LOCK:
        if _EMPTY_STORE is None:
            made = Path(tempfile.mkdtemp(prefix="router-ml-empty-store-")) / "mlflow.db"
            mlflow.MlflowClient(f"sqlite:///{made}").search_experiments()  # creates and migrates the schema
            atexit.register(shutil.rmtree, made.parent, True)
            _EMPTY_STORE = made
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(_EMPTY_STORE)) as empty, contextlib.closing(
                sqlite3.connect(target)
            ) as new:
                empty.backup(new)  # a consistent copy, whatever MLflow still holds open on the original
    return f"sqlite:///{target}"


def registered(folder: Path) -> list[str]:
    """The versions in the local store at ``folder/mlflow.db``, newest first; none when there is no store (opening
    one to look would make it)."""
    store = folder / "mlflow.db"
    return [v.version for v in PolicyRegistry(f"sqlite:///{store}").versions()] if store.exists() else []


def champion(home: Path, artifact: PolicyArtifact) -> tuple[str, PolicyRegistry]:
    """A fresh MLflow store under ``home`` holding ``artifact`` as version 1, the champion; returns its URI too."""
    uri = sqlite_store(home)
    registry = PolicyRegistry(uri)
    registry.log_version(artifact, params={"lam": 0.05}, metrics={})
    registry.promote("1")
    return uri, registry


def write_config(
    path: Path,
    *,
    home: Path,
    upstream: str,
    models: dict[str, str],
    extra: str = "",
    server: str = "",
    log: Path | str | None = None,
    log_options: str = "",
    policy: str = "",
) -> Path:
    """A service TOML: catalog models mapped to fake-upstream behaviours (``ok-...``, ``fail-...``); ``server`` is the
    body of its ``[server]`` table; the decision log at ``log`` (a path, default under ``home``, or a PostgreSQL
    URL), with ``log_options``; ``policy`` adds to the ``[policy]`` table."""
    where = "url" if str(log).startswith("postgresql://") else "path"
    lines = [
        "[server]",
        server,
        "[policy]",
        'ref = "champion"',
        policy,
        "[log]",
        f'{where} = "{log or home / "serve" / "decisions.sqlite"}"',
        'durability = "full"',
        log_options,
        "[upstream]",
        f'endpoint = "{upstream}"',
        "first_byte_timeout_seconds = 1.0",
        "connect_timeout_seconds = 1.0",
        "max_attempts = 4",
        '[tenants."team-a"]',
        'api_keys_env = "TEAM_A_KEYS"',
        '[tenants."team-b"]',
        'api_keys_env = "TEAM_B_KEYS"',
    ]
    for name, behaviour in models.items():
        lines += [f'[upstream.models."{name}"]', f'upstream_model = "{behaviour}-{name}"']
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


class Server:
    """A service on a free loopback port, over the config file ``config``, with its home and MLflow store."""

    def __init__(self, config: Path, home: Path, tracking_uri: str, env: dict[str, str] | None = None) -> None:
        self.config, self.home, self.tracking_uri = config, home, tracking_uri
        self.env = env or {}
        self.log = Path(tomllib.loads(config.read_text(encoding="utf-8"))["log"].get("path", ""))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._http: httpx.Client | None = None

    def environment(self) -> dict[str, str]:
        """The variables the service reads: its home, the MLflow store, the keys of each tenant and the admin's."""
        return {
            "ROUTER_ML_HOME": str(self.home),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "ROUTER_ML_API_KEYS": OTHER_KEY,
            "TEAM_A_KEYS": API_KEY,
            "TEAM_B_KEYS": TEAM_B_KEY,
            "ROUTER_ML_ADMIN_KEYS": ADMIN_KEY,
            **self.env,
        }

    def get(self, path: str, key: str | None = None, timeout: float = 30.0) -> httpx.Response:
        """GET ``path``, as ``key``'s bearer when given, through this server's one client (tests poll, and making
        a client costs ~20 ms of CPU: its TLS context)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.url)
        return self._http.get(path, headers={"authorization": f"Bearer {key}"} if key else None, timeout=timeout)

    def health(self) -> dict[str, Any]:
        found: dict[str, Any] = self.get("/healthz").json()
        return found

    def applied(self) -> int:
        """The grades the service has learned (``/healthz``'s ``feedback_applied``)."""
        return int(self.health()["feedback_applied"])

    def stop(self) -> None:
        """Stop the service (the subclass's way) and close this kit's client."""
        self._stop()
        if self._http is not None:
            self._http.close()
            self._http = None

    def _stop(self) -> None:
        raise NotImplementedError

    @contextmanager
    def _environment_set(self) -> Iterator[pytest.MonkeyPatch]:
        """This process's environment as the service would see it, for as long as the block runs."""
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.environment().items():
                patch.setenv(name, value)
            yield patch


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "the condition") -> None:
    """Poll ``condition`` every 0.1 s until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class InProcessServer(Server):
    """The service built in this process and served by uvicorn in a background thread: real HTTP for the clients
    (httpx, the OpenAI SDK, raw sockets), without the seconds a new Python process spends importing and loading."""

    def __init__(self, config: Path, home: Path, tracking_uri: str, env: dict[str, str] | None = None) -> None:
        super().__init__(config, home, tracking_uri, env)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> InProcessServer:
        with self._environment_set():  # the service reads its variables while it is built
            app = create_app(build_service(ServeConfig.load(self.config)))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        return self

    def fails_to_start(self) -> tuple[int, str]:
        """``router-ml serve`` (through the CLI's entry point, in this process) on a config it must refuse before it
        serves: the exit status and standard error. A service that does start fails the test at once."""

        def serving(*args: object, **kwargs: object) -> None:
            raise AssertionError("the service started")

        err = io.StringIO()
        with self._environment_set() as patch, contextlib.redirect_stderr(err):
            patch.setattr(uvicorn, "run", serving)
            code = main(["serve", "--config", str(self.config), "--port", str(self.port)])
        return code, err.getvalue()

    def _stop(self) -> None:
        """A graceful stop: the app's shutdown closes the service (learner, log, upstream connections)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=60)
            self._server = self._thread = None


class ServerProcess(Server):
    """`router-ml serve` in its own process on a free loopback port."""

    def __init__(
        self,
        config: Path,
        home: Path,
        tracking_uri: str,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        command: str = "serve",
    ) -> None:
        super().__init__(config, home, tracking_uri, env)
        self.args, self.command = list(args), command
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = {**os.environ, **self.environment()}
        cmd = [sys.executable, "-m", "router_ml.cli", self.command, "--config", str(self.config), *self.args]
        if self.command == "serve":
            cmd += ["--port", str(self.port)]
        return cmd, env

    def fails_to_start(self, timeout: float = 120.0) -> tuple[int, str]:
        """Run a server that is expected to refuse to start: its exit code and its standard error."""
        cmd, env = self._command()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        return done.returncode, done.stderr

    def start(self, timeout: float = 120.0) -> ServerProcess:
        cmd, env = self._command()
        with open(self.home / "serve.err", "ab") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        if self.command != "serve":
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / 'serve.err').read_text()[-3000:]}")
            try:
                if self.get("/healthz", timeout=1.0).status_code == 200:
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

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def running(config: Path, home: Path, tracking_uri: str) -> Iterator[InProcessServer]:
    server = InProcessServer(config, home, tracking_uri).start()
    try:
        yield server
    finally:
        server.stop()


def decision_row(server: Server, decision_id: str) -> dict[str, object]:
    """A decision's row in the service's log, read beside the running service (WAL lets a reader in)."""
    with contextlib.closing(sqlite3.connect(f"file:{server.log}?mode=ro", uri=True)) as db:
        db.row_factory = sqlite3.Row
        found = db.execute(
            "SELECT d.*, f.quality, f.cost_usd AS client_cost_usd FROM decisions d"
            " LEFT JOIN feedback f USING (decision_id) WHERE decision_id = ?",
            (decision_id,),
        ).fetchone()
    assert found is not None, f"no decision {decision_id} in the log"
    return dict(found)


def client(server: Server, key: str = API_KEY) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {key}"}, timeout=30.0)


@contextmanager
def serving_champion(home: Path, artifact: PolicyArtifact, upstream: str, **options: Any) -> Iterator[InProcessServer]:
    """``artifact`` as the champion of a fresh store under ``home``, served with every catalog model on the fake
    upstream answering ``ok``; ``options`` go to :func:`write_config`."""
    uri, _ = champion(home, artifact)
    config = write_config(
        home / "serve.toml", home=home, upstream=upstream, models=dict.fromkeys(MODELS, "ok"), **options
    )
    with running(config, home, uri) as server:
        yield server


def mount_tmpfs(where: Path, *options: str) -> bool:
    """Mount a 4 MiB tmpfs at ``where`` (a small real disk to fill, or to mount read-only); False where not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=4m", *options)), "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)
