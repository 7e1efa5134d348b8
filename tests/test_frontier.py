"""The four frontier numbers, checked on hand-computable points."""

from __future__ import annotations

import pytest

from router_ml.frontier import cost_at, lam_sweep, running_max_auc, summarise


def test_four_numbers_by_hand() -> None:
    points = [(0.2, 0.5), (0.5, 0.8), (0.9, 0.7), (2.0, 0.95)]
    s = summarise(points, best_quality=0.8, best_cost=1.0)
    assert s.q_max == 0.95
    assert s.cost_at_parity == pytest.approx(0.5)
    assert s.cost_at_97_5 == pytest.approx(0.5)  # 0.78 first reached at cost 0.5
    # running max: 0 on [0, .2), .5 on [.2, .5), .8 on [.5, 1]  -> (.3*.5 + .5*.8) / 1
    assert s.auc == pytest.approx(0.3 * 0.5 + 0.5 * 0.8)


def test_unreached_parity_is_none_and_costs_are_relative() -> None:
    s = summarise([(1.0, 0.5), (3.0, 0.6)], best_quality=0.7, best_cost=2.0)
    assert s.cost_at_parity is None and s.cost_at_97_5 is None
    assert s.auc == pytest.approx(0.5 * 0.5)  # 0.5 from cost 1 to 2, over [0, 2]
    assert cost_at([(1.0, 0.9)], 0.8, 4.0) == pytest.approx(0.25)


def test_errors_and_sweep() -> None:
    with pytest.raises(ValueError):
        summarise([], 0.5, 1.0)
    with pytest.raises(ValueError):
        running_max_auc([(0.1, 0.2)], 0.0)
    sweep = lam_sweep(10, 1e-3, 1.0)
    assert sweep[0] == 0.0 and len(sweep) == 10 and sweep[-1] == pytest.approx(1.0)
