"""Targets, the upper hull and the operating point chosen on it; the cost model that prices each model."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.catalog import Catalog, ModelSpec
from router_ml.cost_model import CostModel, estimate_tokens
from router_ml.frontier import hull_points, hull_quality
from router_ml.operating import Arm, ArmValue, OperatingPoint, Target, choose, upper_hull

CHEAP, MID, TOP = Arm(model="cheap"), Arm(model="mid"), Arm(model="top")
SINGLES = [ArmValue(CHEAP, 0.50, 0.1), ArmValue(MID, 0.70, 1.0), ArmValue(TOP, 0.75, 10.0)]


@pytest.mark.parametrize(
    ("text", "kind", "value", "reference", "relative"),
    [
        ("parity", "quality", 1.0, None, False),
        ("parity:gpt-4o", "quality", 1.0, "gpt-4o", False),
        ("quality:0.975", "quality", 0.975, None, False),
        ("quality:0.9:claude", "quality", 0.9, "claude", False),
        ("budget:0.5", "budget", 0.5, None, False),
        ("budget:10%", "budget", 0.1, None, True),
        ("budget:25%:gpt-4o", "budget", 0.25, "gpt-4o", True),
    ],
)
def test_targets_parse_and_print_back(
    text: str, kind: str, value: float, reference: str | None, relative: bool
) -> None:
    t = Target.parse(text)
    assert (t.kind, t.reference, t.relative) == (kind, reference, relative)
    assert t.value == pytest.approx(value)
    assert Target.parse(t.label) == t


@pytest.mark.parametrize("text", ["", "parityy", "quality", "quality:abc", "budget:-1", "budget:0.5:gpt-4o", "x:1"])
def test_bad_targets_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="target"):
        Target.parse(text)


def test_goals_are_absolute() -> None:
    assert Target.parse("quality:0.975").goal(0.8, 6.0) == pytest.approx(0.78)
    assert Target.parse("budget:10%").goal(0.8, 6.0) == pytest.approx(0.6)
    assert Target.parse("budget:0.5").goal(0.8, 6.0) == pytest.approx(0.5)


def test_hull_drops_dominated_and_concave_points() -> None:
    inside = ArmValue(Arm(lam=1.0), 0.55, 0.6)  # below the cheap -> mid segment
    dominated = ArmValue(Arm(lam=2.0), 0.6, 12.0)
    hull = upper_hull([*SINGLES, inside, dominated])
    assert [v.arm for v in hull] == [CHEAP, MID, TOP]


def test_a_quality_target_is_met_exactly_by_mixing_two_arms() -> None:
    chosen = choose(SINGLES, "quality", 0.72)
    assert chosen.met
    assert chosen.point.arms == (MID, TOP)
    assert chosen.quality == pytest.approx(0.72)
    w = chosen.point.weights[1]
    assert chosen.cost_per_1k == pytest.approx((1 - w) * 1.0 + w * 10.0)


def test_a_budget_buys_the_best_hull_point_under_it() -> None:
    chosen = choose(SINGLES, "budget", 0.55)
    assert chosen.met and chosen.cost_per_1k == pytest.approx(0.55)
    assert chosen.point.arms == (CHEAP, MID)
    assert choose(SINGLES, "budget", 50.0).point == OperatingPoint((TOP,))


def test_a_router_above_the_hull_is_chosen_over_single_models() -> None:
    router = ArmValue(Arm(lam=0.01), 0.74, 2.0)
    chosen = choose([*SINGLES, router], "quality", 0.74)
    assert chosen.point == OperatingPoint((router.arm,))


def test_unreachable_targets_say_so_and_give_the_closest_point() -> None:
    too_good = choose(SINGLES, "quality", 0.9)
    assert not too_good.met and too_good.point == OperatingPoint((TOP,))
    too_cheap = choose(SINGLES, "budget", 0.01)
    assert not too_cheap.met and too_cheap.point == OperatingPoint((CHEAP,))


def test_operating_points_round_trip_and_refuse_bad_mixtures() -> None:
    point = OperatingPoint((Arm(lam=0.002), TOP), (0.3, 0.7))
    assert OperatingPoint.from_dict(point.to_dict()) == point
    assert "0.30 x router@0.002" in point.label
    with pytest.raises(ValueError, match="weights"):
        OperatingPoint((CHEAP, TOP), (0.5, 0.6))
    with pytest.raises(ValueError, match="arm"):
        Arm(lam=0.1, model="x")
    with pytest.raises(ValueError, match="lam"):
        Arm(lam=float("nan"))


def test_single_model_hull_interpolates_and_is_minus_infinity_below_the_cheapest() -> None:
    singles = [(0.1, 0.5), (1.0, 0.7), (10.0, 0.75), (5.0, 0.6)]
    assert hull_quality(singles, 0.55) == pytest.approx(0.6)
    assert hull_quality(singles, 1.0) == pytest.approx(0.7)
    assert hull_quality(singles, 0.05) == -np.inf
    pts = hull_points(singles, per_segment=4)
    assert pts[0] == (0.1, 0.5) and pts[-1] == (10.0, 0.75)
    assert all(abs(q - hull_quality(singles, c)) < 1e-12 for c, q in pts)


def test_cost_model_learns_completion_lengths_from_costs_and_usage() -> None:
    catalog = Catalog((ModelSpec("a", 5.0, 15.0), ModelSpec("b", 0.5, 1.5), ModelSpec("free", 0.0, 0.0)))
    costs = CostModel.for_catalog(catalog)
    assert np.allclose(costs.expected_output_tokens(), 256.0)
    # 100 prompt tokens, 300 completion tokens on "a": (100 * 5 + 300 * 15) / 1e6
    costs.observe_cost(0, 100, (100 * 5.0 + 300 * 15.0) / 1e6)
    costs.observe_output_tokens(1, 100)
    costs.observe_cost(2, 100, 0.0)  # free output says nothing about length
    out = costs.expected_output_tokens()
    assert out[0] == pytest.approx((300 + 200) / 2)  # one pseudo-observation of the pooled mean (200)
    assert out[1] == pytest.approx((100 + 200) / 2)
    assert out[2] == pytest.approx(200.0)
    per_1k = costs.per_1k(np.array([100, 1000]))
    assert per_1k.shape == (2, 3)
    assert per_1k[0, 0] == pytest.approx((100 * 5 + out[0] * 15) / 1e3)
    assert per_1k[1, 0] > per_1k[0, 0]
    grown = CostModel.from_json(costs.to_json(), Catalog((catalog.spec("b"), ModelSpec("new", 1.0, 1.0))))
    assert grown.output_counts.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="output_tokens"):
        costs.observe_output_tokens(0, float("nan"))
    assert estimate_tokens("") == 1 and estimate_tokens("abcdefghi") == 3
