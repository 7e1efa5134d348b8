"""The model catalog: which models the router may choose, what they cost, and where they live.

A catalog is a TOML file::

    [[models]]
    name = "gpt-4o"
    input_usd_per_mtok = 5.0
    output_usd_per_mtok = 15.0
    endpoint = "https://api.example.com/v1"   # optional, used when serving
    api_key_env = "EXAMPLE_API_KEY"          # optional, used when serving

The order of ``[[models]]`` is the catalog order: policies return their distributions in it.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from router_ml.atomic import atomic_write_text
from router_ml.errors import InvalidInput, UnknownName


class CatalogError(InvalidInput):
    """A catalog file or entry is malformed; the message names the model and field."""


@dataclass(frozen=True)
class ModelSpec:
    """One routable model and its list prices (USD per million tokens)."""

    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    endpoint: str | None = None
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise CatalogError("catalog: a model has an empty 'name'")
        for field in ("input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise CatalogError(f"catalog: model '{self.name}' field '{field}' must be a number >= 0, got {value!r}")

    @property
    def blended_usd_per_mtok(self) -> float:
        """Mean of input and output price: the price feature the policy sees."""
        return (self.input_usd_per_mtok + self.output_usd_per_mtok) / 2.0

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """Cost of one call from its token counts."""
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6


@dataclass(frozen=True)
class Catalog:
    """An ordered set of :class:`ModelSpec` with unique names."""

    models: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        if not self.models:
            raise CatalogError("catalog: has no models")
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise CatalogError(f"catalog: field 'name': model '{m.name}' appears twice")
            seen.add(m.name)

    @cached_property
    def names(self) -> list[str]:
        """Model names in catalog order."""
        return [m.name for m in self.models]

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {m.name: i for i, m in enumerate(self.models)}

    def __len__(self) -> int:
        return len(self.models)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._positions

    def index(self, name: str) -> int:
        """Position of ``name`` in catalog order (a dict lookup: the learning loop asks once per event)."""
        try:
            return self._positions[name]
        except KeyError:
            raise UnknownName(f"model '{name}' is not in the catalog ({len(self.models)} models)") from None

    def spec(self, name: str) -> ModelSpec:
        """The entry for ``name``."""
        return self.models[self.index(name)]

    def require(self, names: Iterable[str], what: str) -> None:
        """Raise :class:`CatalogError` naming the first of ``names`` that the catalog lacks."""
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise CatalogError(f"{what}: model(s) not in the catalog: {', '.join(unknown[:5])}")

    def with_model(self, spec: ModelSpec) -> Catalog:
        """A catalog with ``spec`` appended (a policy keeps its weights and explores the newcomer)."""
        return Catalog((*self.models, spec))

    def to_toml(self) -> str:
        """Render as TOML (strings are JSON-escaped, which TOML basic strings accept)."""
        lines = ["# router-ml model catalog: prices in USD per million tokens.", ""]
        for m in self.models:
            lines += ["[[models]]", f"name = {json.dumps(m.name)}"]
            lines += [
                f"input_usd_per_mtok = {m.input_usd_per_mtok!r}",
                f"output_usd_per_mtok = {m.output_usd_per_mtok!r}",
            ]
            if m.endpoint is not None:
                lines.append(f"endpoint = {json.dumps(m.endpoint)}")
            if m.api_key_env is not None:
                lines.append(f"api_key_env = {json.dumps(m.api_key_env)}")
            lines.append("")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        """Write the TOML file atomically."""
        atomic_write_text(path, self.to_toml())

    @classmethod
    def from_toml(cls, text: str, source: str = "catalog") -> Catalog:
        """Parse TOML text."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"{source}: not valid TOML: {exc}") from exc
        entries = doc.get("models")
        if not isinstance(entries, list):
            raise CatalogError(f"{source}: needs a [[models]] array of tables")
        models = []
        allowed = {"name", "input_usd_per_mtok", "output_usd_per_mtok", "endpoint", "api_key_env"}
        for i, entry in enumerate(entries):
            for field in ("name", "input_usd_per_mtok", "output_usd_per_mtok"):
                if field not in entry:
                    raise CatalogError(f"{source}: models[{i}] is missing field '{field}'")
            extra = set(entry) - allowed
            if extra:
                raise CatalogError(f"{source}: models[{i}] has unknown field(s) {sorted(extra)}")
            models.append(ModelSpec(**entry))
        return cls(tuple(models))

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        """Read a catalog TOML file."""
        p = Path(path)
        if not p.exists():
            raise CatalogError(f"catalog: file not found: {p}")
        return cls.from_toml(p.read_text(encoding="utf-8"), source=f"catalog {p}")

    @classmethod
    def from_prices_csv(cls, path: str | Path) -> Catalog:
        """Build a catalog from ``model,input_usd_per_mtok,output_usd_per_mtok`` rows."""
        p = Path(path)
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        models = []
        for i, row in enumerate(rows):
            try:
                models.append(
                    ModelSpec(row["model"], float(row["input_usd_per_mtok"]), float(row["output_usd_per_mtok"]))
                )
            except (KeyError, ValueError) as exc:
                raise CatalogError(f"prices {p}: row {i + 1} is malformed: {exc}") from exc
        return cls(tuple(models))

    @classmethod
    def from_benchmark(cls, benchmark: pl.DataFrame) -> Catalog:
        """Estimate a catalog from a benchmark's own costs, for benchmarks that come without a price list.

        With token columns, each model's price is its total cost over its total tokens; without them,
        its mean cost per call is treated as the price of a 1,000-token call.
        """
        has_tokens = {"input_tokens", "output_tokens"} <= set(benchmark.columns)
        tokens = (pl.col("input_tokens") + pl.col("output_tokens")).sum() if has_tokens else pl.len() * 1000
        per_model = (
            benchmark.group_by("model", maintain_order=True)
            .agg((pl.col("cost_usd").sum() / tokens * 1e6).alias("price"))
            .sort("model")
        )
        return cls(tuple(ModelSpec(r["model"], r["price"], r["price"]) for r in per_model.iter_rows(named=True)))
