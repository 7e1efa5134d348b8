"""The live savings estimate: its intervals cover the truth on real benchmark outcomes under a known logging policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router_ml.catalog import Catalog
from router_ml.contracts import load_benchmark
from router_ml.cost_model import CostModel, estimate_tokens
from router_ml.fullinfo import FullInfo
from router_ml.savings import LiveSavings
from router_ml.simulate import EpsilonGreedy, simulate

REFERENCE = "gpt-4o"


def test_intervals_cover_the_truth_and_a_biased_cost_baseline_does_no_harm(learning_benchmark: Path) -> None:
    """A router that mostly sends gemini-1.5-flash and explores the rest, against always gpt-4o. The reference's
    cost baseline is priced with a default completion length (wrong on purpose); the DR correction fixes it."""
    bench = load_benchmark(learning_benchmark)
    catalog = Catalog.from_benchmark(bench)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    ref = table.models.index(REFERENCE)
    prices = CostModel.for_catalog(catalog)
    tokens = {p: estimate_tokens(p) for p in table.prompts}
    truth_ref_q = float(np.nanmean(table.quality[:, ref]))
    truth_ref_c = float(np.nanmean(table.cost[:, ref])) * 1000
    covered = {"quality_diff": 0, "reference_quality": 0, "saved_per_1k": 0}
    seeds = 20
    for seed in range(seeds):
        logs = simulate(table, 2000, seed=seed, logging=EpsilonGreedy("gemini-1.5-flash", 0.3))
        live = LiveSavings(REFERENCE)
        for m, p, q, c, prompt in logs.select("model", "propensity", "quality", "cost_usd", "prompt").iter_rows():
            baseline = float(prices.per_1k(tokens[prompt])[ref])
            live.observe(m, p, q, c, reference_offered=True, reference_cost_per_1k=baseline)
        report = live.report()
        assert report.n == 2000 and report.reference == REFERENCE
        router_q = float(logs["quality"].mean())  # type: ignore[arg-type]
        router_c = float(logs["cost_usd"].mean()) * 1000  # type: ignore[arg-type]
        assert report.router_quality.value == pytest.approx(router_q)
        covered["reference_quality"] += report.reference_quality.low <= truth_ref_q <= report.reference_quality.high
        diff = router_q - truth_ref_q
        covered["quality_diff"] += report.quality_diff.low <= diff <= report.quality_diff.high
        saved = truth_ref_c - router_c
        covered["saved_per_1k"] += report.saved_per_1k.low <= saved <= report.saved_per_1k.high
    for key, hits in covered.items():
        assert hits >= 0.8 * seeds, (key, hits)


def test_decisions_without_the_reference_are_skipped_and_bad_grades_refused() -> None:
    live = LiveSavings("ref")
    live.observe("other", 0.5, 1.0, 0.001, reference_offered=False, reference_cost_per_1k=5.0)
    assert live.report().n == 0
    assert live.report().to_dict()["quality_diff"]["low"] is None, "no interval before two graded decisions"
    live.observe("ref", 0.5, 1.0, 0.005, reference_offered=True, reference_cost_per_1k=4.0)
    live.observe("other", 0.5, 0.0, 0.001, reference_offered=True, reference_cost_per_1k=4.0)
    report = live.report()
    assert report.n == 2
    # no past to build the baseline from: 0.5, corrected by the first grade; then the reference's own mean (1.0)
    assert report.reference_quality.value == pytest.approx((0.5 + (1.0 - 0.5) / 0.5 + 1.0) / 2)
    assert report.saved_per_1k.value == pytest.approx(((4.0 + (5.0 - 4.0) / 0.5) - 5.0 + (4.0 - 1.0)) / 2)
    for bad in ({"propensity": 0.0}, {"quality": 1.5}, {"cost_usd": float("nan")}):
        args = {"propensity": 0.5, "quality": 1.0, "cost_usd": 0.001} | bad
        with pytest.raises(ValueError, match="savings"):
            live.observe("ref", reference_offered=True, reference_cost_per_1k=1.0, **args)
