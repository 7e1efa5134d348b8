"""The model catalog: price list import, TOML round trip, clear errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from router_ml import settings
from router_ml.catalog import Catalog, CatalogError, ModelSpec


def test_default_catalog_matches_the_shared_price_list() -> None:
    from_csv = Catalog.from_prices_csv(settings.default_prices())
    committed = Catalog.load(settings.default_catalog())
    assert committed == from_csv
    assert len(committed) == 31
    gpt = committed.spec("gpt-4o")
    assert (gpt.input_usd_per_mtok, gpt.output_usd_per_mtok) == (5.0, 15.0)
    assert gpt.cost_usd(1_000, 2_000) == pytest.approx(0.035)


def test_toml_round_trip_keeps_order_and_serving_fields(tmp_path: Path) -> None:
    cat = Catalog(
        (ModelSpec("b", 1, 2, endpoint="http://127.0.0.1:9/v1", api_key_env="KEY_B"), ModelSpec("a", 0.1, 0.2))
    )
    cat.save(tmp_path / "c.toml")
    back = Catalog.load(tmp_path / "c.toml")
    assert back == cat
    assert back.names == ["b", "a"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[models]]\nname = "a"\ninput_usd_per_mtok = 1.0\n', "missing field 'output_usd_per_mtok'"),
        ('[[models]]\nname = "a"\ninput_usd_per_mtok = -1.0\noutput_usd_per_mtok = 1.0\n', "'input_usd_per_mtok'"),
        ('[[models]]\nname = "a"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\nprice = 3\n', "unknown field"),
        ("models = 3\n", "[[models]]"),
        ("this is not toml = = \n", "not valid TOML"),
    ],
)
def test_malformed_catalogs_name_the_field(text: str, fragment: str) -> None:
    with pytest.raises(CatalogError) as err:
        Catalog.from_toml(text)
    assert fragment in str(err.value)


def test_duplicates_and_unknown_models_are_refused() -> None:
    with pytest.raises(CatalogError, match="appears twice"):
        Catalog((ModelSpec("a", 1, 1), ModelSpec("a", 2, 2)))
    with pytest.raises(CatalogError, match="zz"):
        Catalog((ModelSpec("a", 1, 1),)).require(["a", "zz"], "logs")


def test_prices_estimated_from_a_benchmark_without_a_price_list() -> None:
    bench = pl.DataFrame(
        {
            "model": ["x", "x", "y"],
            "cost_usd": [0.002, 0.004, 0.001],
            "input_tokens": [100, 100, 50],
            "output_tokens": [900, 900, 450],
        }
    )
    cat = Catalog.from_benchmark(bench)
    assert cat.names == ["x", "y"]
    assert cat.spec("x").input_usd_per_mtok == pytest.approx(0.006 / 2000 * 1e6)
    assert cat.spec("y").blended_usd_per_mtok == pytest.approx(2.0)
