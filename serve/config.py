"""The service's configuration: one TOML file, every field optional, every error naming its field.

::

    [server]
    host = "127.0.0.1"
    port = 8000
    api_keys_env = "ROUTER_ML_API_KEYS"   # comma-separated bearer keys live in this variable
    max_body_bytes = 1048576

    [policy]
    ref = "champion"          # an MLflow alias or version, or a policy folder
    tracking_uri = ""         # default: $MLFLOW_TRACKING_URI or the local store

    [log]
    path = ".router-ml/serve/decisions.sqlite"
    durability = "full"       # "full": fsync per commit; "normal": survives a killed process, not power loss

    [learning]
    snapshot_every_updates = 1000
    snapshot_every_seconds = 600.0
    reload_poll_seconds = 30.0
    seed = 0

    [budget]
    target_usd_per_1k = 0.5   # omit for no budget
    step = 0.01

    [upstream]
    endpoint = "https://api.openai.com/v1"   # default for every model
    api_key_env = "OPENAI_API_KEY"
    connect_timeout_seconds = 5.0
    first_byte_timeout_seconds = 30.0
    max_attempts = 3

    [upstream.models."claude-3-5-sonnet"]     # per-model overrides
    endpoint = "https://example.com/v1"
    api_key_env = "EXAMPLE_KEY"
    upstream_model = "claude-3-5-sonnet-20241022"

Per-model endpoints may also come from the policy's catalog (``endpoint`` / ``api_key_env`` fields).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from router_ml import settings
from router_ml.decision_log import Durability


class ConfigError(ValueError):
    """The service configuration is malformed; the message names the field."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_env: str = "ROUTER_ML_API_KEYS"
    max_body_bytes: int = 1 << 20


@dataclass(frozen=True)
class PolicySource:
    ref: str = "champion"
    tracking_uri: str = ""


@dataclass(frozen=True)
class LogConfig:
    path: str = ""
    durability: Durability = "full"

    def resolved_path(self) -> Path:
        """``path``, or ``$ROUTER_ML_HOME/serve/decisions.sqlite``."""
        return Path(self.path) if self.path else settings.decision_log_path()


@dataclass(frozen=True)
class LearningConfig:
    snapshot_every_updates: int = 1000
    snapshot_every_seconds: float = 600.0
    reload_poll_seconds: float = 30.0
    seed: int = 0


@dataclass(frozen=True)
class BudgetConfig:
    target_usd_per_1k: float | None = None
    step: float = 0.01


@dataclass(frozen=True)
class UpstreamModel:
    endpoint: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    endpoint: str | None = None
    api_key_env: str | None = None
    connect_timeout_seconds: float = 5.0
    first_byte_timeout_seconds: float = 30.0
    max_attempts: int = 3
    models: dict[str, UpstreamModel] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    policy: PolicySource = field(default_factory=PolicySource)
    log: LogConfig = field(default_factory=LogConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)

    @classmethod
    def load(cls, path: str | Path | None) -> ServeConfig:
        """Read a TOML file (``None``: all defaults)."""
        if path is None:
            return cls.from_dict({})
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config: file not found: {p}")
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {p}: not valid TOML: {exc}") from exc
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ServeConfig:
        """Build and check a config from parsed TOML."""
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(doc) - set(sections)
        if unknown:
            raise ConfigError(f"config: unknown section(s) {sorted(unknown)}")
        upstream = dict(doc.get("upstream", {}))
        models = {
            name: _section(UpstreamModel, spec, f"upstream.models.{name}")
            for name, spec in dict(upstream.pop("models", {})).items()
        }
        config = cls(
            server=_section(ServerConfig, doc.get("server", {}), "server"),
            policy=_section(PolicySource, doc.get("policy", {}), "policy"),
            log=_section(LogConfig, doc.get("log", {}), "log"),
            learning=_section(LearningConfig, doc.get("learning", {}), "learning"),
            budget=_section(BudgetConfig, doc.get("budget", {}), "budget"),
            upstream=_section(UpstreamConfig, {**upstream, "models": models}, "upstream"),
        )
        config.check()
        return config

    def check(self) -> None:
        """Range checks; raises :class:`ConfigError` naming the field."""
        positive: dict[str, float] = {
            "server.port": self.server.port,
            "server.max_body_bytes": self.server.max_body_bytes,
            "learning.snapshot_every_updates": self.learning.snapshot_every_updates,
            "learning.snapshot_every_seconds": self.learning.snapshot_every_seconds,
            "learning.reload_poll_seconds": self.learning.reload_poll_seconds,
            "budget.step": self.budget.step,
            "upstream.connect_timeout_seconds": self.upstream.connect_timeout_seconds,
            "upstream.first_byte_timeout_seconds": self.upstream.first_byte_timeout_seconds,
            "upstream.max_attempts": self.upstream.max_attempts,
        }
        if self.budget.target_usd_per_1k is not None:
            positive["budget.target_usd_per_1k"] = self.budget.target_usd_per_1k
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"config: '{name}' must be > 0, got {value}")
        if self.log.durability not in ("full", "normal"):
            raise ConfigError(f"config: 'log.durability' must be 'full' or 'normal', got {self.log.durability!r}")


def _section(kind: Any, values: Any, name: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config: '{name}' must be a table")
    known = {f.name: f for f in fields(kind)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"config: '{name}' has unknown field(s) {sorted(unknown)}")
    for key, value in values.items():
        if key == "models":
            continue
        wanted = str(known[key].type).split(" | ")[0]  # the annotation, e.g. "float | None" -> "float"
        ok = {
            "str": isinstance(value, str),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
        }.get(wanted, True)
        if not ok:
            raise ConfigError(f"config: '{name}.{key}' must be {wanted}, got {value!r}")
    return kind(**values)
