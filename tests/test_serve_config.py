"""The service's TOML configuration: every mistake is refused with the field's name, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_ml.cli import main
from serve.auth import Keys, Principal
from serve.config import ConfigError, ServeConfig


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[servr]\nport = 1\n", "servr"),
        ("[server]\nport = 'x'\n", "server.port"),
        ("[server]\nport = -1\n", "server.port"),
        ("[learning]\nsnapshot_every_updates = 0\n", "learning.snapshot_every_updates"),
        ("[budget]\ntarget_usd_per_1k = 'cheap'\n", "budget.target_usd_per_1k"),
        ("[log]\ndurability = 'sometimes'\n", "log.durability"),
        ("[upstream.models.x]\nendpoint = 3\n", "upstream.models.x.endpoint"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ServeConfig.load(path)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # a wrong type, nested at any depth
        ({"server": {"port": "80"}}, "config: 'server.port' must be int, got '80'"),
        ({"server": {"openapi": 1}}, "config: 'server.openapi' must be bool, got 1"),
        ({"learning": {"reload_poll_seconds": True}}, "config: 'learning.reload_poll_seconds' must be float, got True"),
        ({"upstream": {"models": {"m": {"endpoint": 1}}}}, "config: 'upstream.models.m.endpoint' must be str, got 1"),
        ({"tenants": {"t": "x"}}, "config: 'tenants.t' must be a table"),
        # an unknown key: a section, or a field of one (all of one table at once)
        ({"servr": {}}, "config: unknown section(s) ['servr']"),
        ({"log": {"pth": "x", "durabilty": "full"}}, "config: 'log' has unknown field(s) ['durabilty', 'pth']"),
        ({"upstream": {"models": {"m": {"model": "x"}}}}, "config: 'upstream.models.m' has unknown field(s) ['model']"),
        # out of range, or not one of a set
        ({"upstream": {"max_attempts": 0}}, "config: 'upstream.max_attempts' must be > 0, got 0"),
        ({"server": {"max_body_bytes": -1}}, "config: 'server.max_body_bytes' must be > 0, got -1"),
        ({"log": {"busy_timeout_seconds": float("inf")}}, "config: 'log.busy_timeout_seconds' must be > 0, got inf"),
        ({"savings": {"level": 1}}, "config: 'savings.level' must lie in [0.5, 1), got 1"),
        ({"target": {"quality_floor": 0.1, "floor_min_graded": 1}}, "config: 'target.floor_min_graded' must be >= 2"),
        ({"log": {"durability": "sometimes"}}, "config: 'log.durability' must be 'full' or 'normal', got 'sometimes'"),
        # the grader: its kind, its rates, and the fields a kind needs
        ({"grader": {"kind": "vibes"}}, "config: 'grader.kind' must be 'judge', 'exact', 'regex', 'numeric'"),
        ({"grader": {"kind": "exact", "sample_rate": 1.5}}, "config: 'grader.sample_rate' must lie in [0, 1], got 1.5"),
        ({"grader": {"kind": "judge"}}, "config: 'grader.judge_model' must name the catalog model that judges"),
        ({"grader": {"kind": "json-schema"}}, "config: 'grader.schema' must name a file holding the JSON Schema"),
        ({"grader": {"kind": "exact", "judge_model": "gpt-4o"}}, "config: 'grader.judge_model' and 'grader.template'"),
        ({"grader": {"kind": "numeric", "rel_tol": -1.0}}, "config: 'grader.rel_tol' must be >= 0, got -1.0"),
        ({"grader": {"spend_cap_usd_per_1k": 0.0}}, "config: 'grader.spend_cap_usd_per_1k' must be > 0, got 0.0"),
    ],
)
def test_each_mistake_is_one_line_naming_the_dotted_field(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServeConfig.from_dict(doc)
    text = str(caught.value)
    assert text.startswith(message) and "\n" not in text, text


def test_defaults_and_a_full_file(tmp_path: Path) -> None:
    assert ServeConfig.load(None).policy.ref == "champion"
    path = tmp_path / "serve.toml"
    path.write_text(
        "[budget]\ntarget_usd_per_1k = 2\n[upstream]\nendpoint = 'http://127.0.0.1:1/v1'\n"
        "[upstream.models.'gpt-4o']\nupstream_model = 'gpt-4o-2024-08-06'\n",
        encoding="utf-8",
    )
    config = ServeConfig.load(path)
    assert config.budget.target_usd_per_1k == 2
    assert config.upstream.models["gpt-4o"].upstream_model == "gpt-4o-2024-08-06"


def test_serve_refuses_to_start_without_api_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ROUTER_ML_API_KEYS", raising=False)
    assert main(["serve", "--port", "1"]) == 2
    assert "ROUTER_ML_API_KEYS" in capsys.readouterr().err


def test_keys_map_to_one_tenant_or_admin_each(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServeConfig.from_dict({"tenants": {"team-a": {"api_keys_env": "TEAM_A_KEYS"}}})
    monkeypatch.setenv("ROUTER_ML_API_KEYS", "k0")
    monkeypatch.setenv("TEAM_A_KEYS", " k1 , k2 ")
    monkeypatch.setenv("ROUTER_ML_ADMIN_KEYS", "boss")
    keys = Keys(config)
    assert keys.lookup("k1") == keys.lookup("k2") == Principal("team-a")
    assert keys.lookup("k0") == Principal("default") and keys.lookup("boss") == Principal(None)
    assert keys.lookup("k3") is None and keys.lookup("") is None
    assert keys.tenants == ["default", "team-a"]
    monkeypatch.setenv("ROUTER_ML_ADMIN_KEYS", "k1")
    with pytest.raises(ConfigError, match="one role"):
        Keys(config)
    monkeypatch.setenv("ROUTER_ML_ADMIN_KEYS", "boss")
    monkeypatch.delenv("ROUTER_ML_API_KEYS")
    monkeypatch.delenv("TEAM_A_KEYS")
    with pytest.raises(ConfigError, match="at least one tenant"):
        Keys(config)  # an admin key alone cannot route


@pytest.mark.parametrize("name", ["default", "", "a b", "x" * 65])
def test_a_tenant_name_is_checked(name: str) -> None:
    with pytest.raises(ConfigError, match="tenants"):
        ServeConfig.from_dict({"tenants": {name: {"api_keys_env": "V"}}})
