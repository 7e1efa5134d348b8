"""The service's configuration: one TOML file, every field optional, every error naming its field.

::

    [server]
    host = "127.0.0.1"
    port = 8000
    api_keys_env = "ROUTER_ML_API_KEYS"       # comma-separated bearer keys of the tenant "default"
    admin_keys_env = "ROUTER_ML_ADMIN_KEYS"   # admin keys: every tenant's spend, /metrics, the OpenAPI spec
    max_body_bytes = 1048576
    body_timeout_seconds = 10.0               # a request body must arrive whole within this (else 408)
    openapi = false                           # serve /openapi.json (to admin keys); /docs and /redoc never

    [tenants.team-a]                          # more tenants, each with its own keys
    api_keys_env = "TEAM_A_KEYS"

    [policy]
    ref = "champion"          # an MLflow alias or version, or a policy folder
    tracking_uri = ""         # default: $MLFLOW_TRACKING_URI or the local store

    [log]
    path = ".router-ml/serve/decisions.sqlite"
    url = ""                  # or a shared PostgreSQL log: "postgresql://user:password@host:5432/router"
    durability = "full"       # "full": fsync per commit; "normal": survives a killed process, not power loss
    busy_timeout_seconds = 5.0   # how long a write waits for a lock held by another process, then 503

    [learning]
    snapshot_every_updates = 1000
    snapshot_every_seconds = 600.0
    reload_poll_seconds = 30.0
    seed = 0
    max_completion_tokens = 16384   # bounds a client-reported cost: the prompt plus this many completion tokens

    [budget]
    target_usd_per_1k = 0.5   # omit for no budget
    step = 0.01

    [savings]                 # the live estimate of GET /v1/savings and the router_savings_* gauges
    reference = "gpt-4o"      # the model the router is compared with; default: the catalog's most expensive
    level = 0.95              # the intervals' confidence level

    [target]
    quality_floor = 0.01      # omit for none: keep the router's quality at most this far below the reference's
    floor_step = 0.2          # how far each check moves the cost weight (see router_ml.budget.QualityFloor)
    floor_min_graded = 200    # graded decisions before the floor acts
    floor_every = 50          # graded decisions between two checks

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
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from router_ml import settings
from router_ml.errors import InvalidInput
from router_ml.log_store import Durability


class ConfigError(InvalidInput):
    """The service configuration is malformed; the message names the field."""


DEFAULT_TENANT = "default"
"""The tenant of the keys in ``server.api_keys_env``."""
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_env: str = "ROUTER_ML_API_KEYS"
    admin_keys_env: str = "ROUTER_ML_ADMIN_KEYS"
    max_body_bytes: int = 1 << 20
    body_timeout_seconds: float = 10.0
    openapi: bool = False


@dataclass(frozen=True)
class TenantConfig:
    api_keys_env: str = ""


@dataclass(frozen=True)
class PolicySource:
    ref: str = "champion"
    tracking_uri: str = ""


@dataclass(frozen=True)
class LogConfig:
    path: str = ""
    url: str = ""
    durability: Durability = "full"
    busy_timeout_seconds: float = 5.0

    def location(self) -> str:
        """``url`` (a shared PostgreSQL log), else ``path``, else ``$ROUTER_ML_HOME/serve/decisions.sqlite``."""
        return self.url or str(Path(self.path) if self.path else settings.decision_log_path())


@dataclass(frozen=True)
class LearningConfig:
    snapshot_every_updates: int = 1000
    snapshot_every_seconds: float = 600.0
    reload_poll_seconds: float = 30.0
    seed: int = 0
    max_completion_tokens: int = 16384


@dataclass(frozen=True)
class BudgetConfig:
    target_usd_per_1k: float | None = None
    step: float = 0.01


@dataclass(frozen=True)
class SavingsConfig:
    reference: str | None = None
    level: float = 0.95


@dataclass(frozen=True)
class TargetConfig:
    quality_floor: float | None = None
    floor_step: float = 0.2
    floor_min_graded: int = 200
    floor_every: int = 50


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
    savings: SavingsConfig = field(default_factory=SavingsConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)

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
        tenants = doc.get("tenants", {})
        if not isinstance(tenants, dict):
            raise ConfigError("config: 'tenants' must be a table")
        config = cls(
            tenants={name: _section(TenantConfig, spec, f"tenants.{name}") for name, spec in tenants.items()},
            server=_section(ServerConfig, doc.get("server", {}), "server"),
            policy=_section(PolicySource, doc.get("policy", {}), "policy"),
            log=_section(LogConfig, doc.get("log", {}), "log"),
            learning=_section(LearningConfig, doc.get("learning", {}), "learning"),
            budget=_section(BudgetConfig, doc.get("budget", {}), "budget"),
            savings=_section(SavingsConfig, doc.get("savings", {}), "savings"),
            target=_section(TargetConfig, doc.get("target", {}), "target"),
            upstream=_section(UpstreamConfig, {**upstream, "models": models}, "upstream"),
        )
        config.check()
        return config

    def check(self) -> None:
        """Range checks; raises :class:`ConfigError` naming the field."""
        positive: dict[str, float] = {
            "server.port": self.server.port,
            "server.max_body_bytes": self.server.max_body_bytes,
            "server.body_timeout_seconds": self.server.body_timeout_seconds,
            "log.busy_timeout_seconds": self.log.busy_timeout_seconds,
            "learning.max_completion_tokens": self.learning.max_completion_tokens,
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
        if self.target.quality_floor is not None:
            positive |= {
                "target.floor_min_graded": self.target.floor_min_graded,
                "target.floor_every": self.target.floor_every,
            }
            if not (math.isfinite(self.target.quality_floor) and 0 <= self.target.quality_floor <= 1):
                raise ConfigError(f"config: 'target.quality_floor' must lie in [0, 1], got {self.target.quality_floor}")
            if self.target.floor_min_graded < 2:
                raise ConfigError(f"config: 'target.floor_min_graded' must be >= 2, got {self.target.floor_min_graded}")
            if not 0 < self.target.floor_step < 1:
                raise ConfigError(f"config: 'target.floor_step' must lie in (0, 1), got {self.target.floor_step}")
        if not 0.5 <= self.savings.level < 1:
            raise ConfigError(f"config: 'savings.level' must lie in [0.5, 1), got {self.savings.level}")
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"config: '{name}' must be > 0, got {value}")
        for name, tenant in self.tenants.items():
            if not _TENANT_NAME.fullmatch(name) or name == DEFAULT_TENANT:
                raise ConfigError(
                    f"config: 'tenants.{name}': a tenant name is 1-64 of A-Z a-z 0-9 . _ - (and not '{DEFAULT_TENANT}')"
                )
            if not tenant.api_keys_env:
                raise ConfigError(f"config: 'tenants.{name}.api_keys_env' must name the variable holding its keys")
        if self.log.url and not self.log.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("config: 'log.url' must be a postgresql:// URL (or leave it out for the SQLite file)")
        if self.log.url and self.log.path:
            raise ConfigError("config: 'log.url' and 'log.path' name two logs; give one")
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
            "bool": isinstance(value, bool),
        }.get(wanted, True)
        if not ok:
            raise ConfigError(f"config: '{name}.{key}' must be {wanted}, got {value!r}")
    return kind(**values)
