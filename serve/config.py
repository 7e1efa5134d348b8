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

    [grader]                  # omit for no grading (see docs/SERVING.md, "Grading")
    kind = "judge"            # judge | exact | regex | numeric | json | json-schema
    judge_model = "gpt-4o"    # kind = "judge": a catalog model with an upstream endpoint
    template = ""             # kind = "judge": a file holding the judge prompt ({prompt}, {answer}); default rubric
    schema = ""               # kind = "json-schema": a file holding the JSON Schema
    rel_tol = 1e-6            # kind = "numeric": relative and absolute tolerance
    abs_tol = 0.0
    sample_rate = 0.1         # grade this fraction of answered chat completions, drawn at random
    spend_cap_usd_per_1k = 0.2   # judge spend per 1,000 routed requests; omit for none
    timeout_seconds = 30.0    # one grading attempt
    max_attempts = 4          # then the job fails with its reason
    backoff_seconds = 2.0     # before the 2nd attempt, doubling after (a 429's Retry-After, if longer, wins)
    concurrency = 2           # jobs graded at once
    max_pending = 10000       # a backlog this long (a slow or down judge) skips new samples until it shrinks

Per-model endpoints may also come from the policy's catalog (``endpoint`` / ``api_key_env`` fields).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from router_ml import settings
from router_ml.errors import InvalidInput
from router_ml.log_store import Durability


class ConfigError(InvalidInput):
    """The service configuration is malformed; the message names the field."""


DEFAULT_TENANT = "default"
"""The tenant of the keys in ``server.api_keys_env``."""
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _rule(holds: Callable[[float], bool], must: str) -> WrapValidator:
    """A range check on a number of the right type: ``ValueError("must <must>, got <value as written>")``."""

    def check(value: Any, typed: ValidatorFunctionWrapHandler) -> Any:
        number = typed(value)
        if not holds(number):
            raise ValueError(f"must {must}, got {value}")
        return number

    return WrapValidator(check)


_POSITIVE = _rule(lambda v: math.isfinite(v) and v > 0, "be > 0")
PositiveInt = Annotated[int, _POSITIVE]
PositiveFloat = Annotated[float, _POSITIVE]


class _Section(BaseModel):
    """A table of the file: no unknown keys, and no coercion (``port = "80"`` is refused, not read as 80)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: PositiveInt = 8000
    api_keys_env: str = "ROUTER_ML_API_KEYS"
    admin_keys_env: str = "ROUTER_ML_ADMIN_KEYS"
    max_body_bytes: PositiveInt = 1 << 20
    body_timeout_seconds: PositiveFloat = 10.0
    openapi: bool = False


class TenantConfig(_Section):
    api_keys_env: str = ""


class PolicySource(_Section):
    ref: str = "champion"
    tracking_uri: str = ""


class LogConfig(_Section):
    path: str = ""
    url: str = ""
    durability: Durability = "full"
    busy_timeout_seconds: PositiveFloat = 5.0

    def location(self) -> str:
        """``url`` (a shared PostgreSQL log), else ``path``, else ``$ROUTER_ML_HOME/serve/decisions.sqlite``."""
        return self.url or str(Path(self.path) if self.path else settings.decision_log_path())


class LearningConfig(_Section):
    snapshot_every_updates: PositiveInt = 1000
    snapshot_every_seconds: PositiveFloat = 600.0
    reload_poll_seconds: PositiveFloat = 30.0
    seed: int = 0
    max_completion_tokens: PositiveInt = 16384


class BudgetConfig(_Section):
    target_usd_per_1k: PositiveFloat | None = None
    step: PositiveFloat = 0.01


class SavingsConfig(_Section):
    reference: str | None = None
    level: Annotated[float, _rule(lambda v: 0.5 <= v < 1, "lie in [0.5, 1)")] = 0.95


class TargetConfig(_Section):
    """The quality floor; its other fields are checked only when ``quality_floor`` is set (see :class:`ServeConfig`)."""

    quality_floor: Annotated[float, _rule(lambda v: math.isfinite(v) and 0 <= v <= 1, "lie in [0, 1]")] | None = None
    floor_step: float = 0.2
    floor_min_graded: int = 200
    floor_every: int = 50


class UpstreamModel(_Section):
    endpoint: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None


class UpstreamConfig(_Section):
    endpoint: str | None = None
    api_key_env: str | None = None
    connect_timeout_seconds: PositiveFloat = 5.0
    first_byte_timeout_seconds: PositiveFloat = 30.0
    max_attempts: PositiveInt = 3
    models: dict[str, UpstreamModel] = Field(default_factory=dict)


GraderKind = Literal["judge", "exact", "regex", "numeric", "json", "json-schema"]
_NON_NEGATIVE = _rule(lambda v: math.isfinite(v) and v >= 0, "be >= 0")


class GraderConfig(_Section):
    """What grades answered chat completions in the background (:mod:`serve.grading`); no ``kind``: nothing does."""

    kind: GraderKind | None = None
    judge_model: str = ""
    template: str = ""
    schema_: str = Field(default="", alias="schema")
    rel_tol: Annotated[float, _NON_NEGATIVE] = 1e-6
    abs_tol: Annotated[float, _NON_NEGATIVE] = 0.0
    sample_rate: Annotated[float, _rule(lambda v: 0 <= v <= 1, "lie in [0, 1]")] = 0.1
    spend_cap_usd_per_1k: PositiveFloat | None = None
    timeout_seconds: PositiveFloat = 30.0
    max_attempts: PositiveInt = 4
    backoff_seconds: PositiveFloat = 2.0
    concurrency: PositiveInt = 2
    max_pending: PositiveInt = 10000


class ServeConfig(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    policy: PolicySource = Field(default_factory=PolicySource)
    log: LogConfig = Field(default_factory=LogConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    savings: SavingsConfig = Field(default_factory=SavingsConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    grader: GraderConfig = Field(default_factory=GraderConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)

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
        """Build and check a config from parsed TOML; a mistake is a :class:`ConfigError`, one line naming the field."""
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise one_line(exc) from None

    @model_validator(mode="after")
    def _fields_that_depend_on_others(self) -> ServeConfig:
        """The checks that span fields: the quality floor's settings, tenant names, where the log is."""
        _check_target(self.target)
        _check_grader(self.grader)
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
        return self


def _check_target(t: TargetConfig) -> None:
    """With a quality floor set: a step in (0, 1), at least 2 graded decisions, checks > 0."""
    if t.quality_floor is None:
        return
    if t.floor_min_graded < 2:
        raise ConfigError(f"config: 'target.floor_min_graded' must be >= 2, got {t.floor_min_graded}")
    if not 0 < t.floor_step < 1:
        raise ConfigError(f"config: 'target.floor_step' must lie in (0, 1), got {t.floor_step}")
    if t.floor_every <= 0:
        raise ConfigError(f"config: 'target.floor_every' must be > 0, got {t.floor_every}")


def _check_grader(g: GraderConfig) -> None:
    """A judge needs its model, a JSON-Schema check its schema; the other kinds' fields are not for them."""
    if g.kind == "judge" and not g.judge_model:
        raise ConfigError("config: 'grader.judge_model' must name the catalog model that judges (kind = \"judge\")")
    if g.kind == "json-schema" and not g.schema_:
        raise ConfigError("config: 'grader.schema' must name a file holding the JSON Schema (kind = \"json-schema\")")
    if g.kind != "judge" and (g.judge_model or g.template):
        raise ConfigError("config: 'grader.judge_model' and 'grader.template' are for kind = \"judge\"")


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}


def one_line(exc: ValidationError) -> ConfigError:
    """pydantic's errors as one line naming the dotted field: unknown keys first (all of one table together), then
    the first other mistake: a table that is not one, a value of the wrong type, out of range, or not one of a set."""
    errors = exc.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        table = unknown[0]["loc"][:-1]
        names = sorted(str(e["loc"][-1]) for e in unknown if e["loc"][:-1] == table)
        if not table:
            return ConfigError(f"config: unknown section(s) {names}")
        return ConfigError(f"config: '{_dotted(table)}' has unknown field(s) {names}")
    error = errors[0]
    field, kind, value = _dotted(error["loc"]), error["type"], error["input"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return cause
    if kind in ("model_type", "dict_type"):
        return ConfigError(f"config: '{field}' must be a table")
    if kind in _TYPE_NAMES:
        return ConfigError(f"config: '{field}' must be {_TYPE_NAMES[kind]}, got {value!r}")
    if kind == "literal_error":
        return ConfigError(f"config: '{field}' must be {error['ctx']['expected']}, got {value!r}")
    if cause is not None:
        return ConfigError(f"config: '{field}' {cause}")
    return ConfigError(f"config: '{field}' {error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}")


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)
