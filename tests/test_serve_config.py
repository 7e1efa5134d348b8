"""The service's TOML configuration: every mistake is refused with the field's name, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_ml.cli import main
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
