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
