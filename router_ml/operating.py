"""Operating points: what a user asks for (a target), and the served mixture that meets it.

A *target* is what a user wants, in their terms (:class:`Target`):

* ``parity[:MODEL]``: the reference model's quality at the least cost;
* ``quality:0.975[:MODEL]``: at least that fraction of the reference's quality, at the least cost;
* ``budget:USD_PER_1K`` or ``budget:10%[:MODEL]``: the best quality at most at that cost per 1,000 requests
  (absolute, or a share of the reference's cost).

The reference is ``MODEL`` if named, else the best single model of the data the target is calibrated on.

An *operating point* (:class:`OperatingPoint`) is what the service serves: one *arm*, or a random mixture of two.
An arm (:class:`Arm`) is either the learned router at a cost weight ``lam`` or always one fixed model. Mixing two
arms reaches every point on the segment between them, so the cheapest way to meet a target on validation data is a
point on the upper convex hull of all arms (:func:`choose`): the router at every ``lam`` of a sweep and every single
model. Because single models are arms too, a calibrated router is never worse on validation than the best mixture of
two single models (the "single-model hull"); where the learned router cannot beat that mixture, it *is* that mixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from router_ml.errors import InvalidInput

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Arm:
    """One base policy: the router at cost weight ``lam``, or always ``model``."""

    lam: float | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if (self.lam is None) == (self.model is None):
            raise InvalidInput("operating point: an arm is either a router 'lam' or a fixed 'model', not both")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise InvalidInput(f"operating point: 'lam' must be a finite number >= 0, got {self.lam}")

    @property
    def label(self) -> str:
        """``router@0.002`` or ``model:gpt-4o``."""
        return f"router@{self.lam:.6g}" if self.lam is not None else f"model:{self.model}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"lam": self.lam} if self.lam is not None else {"model": self.model}


@dataclass(frozen=True)
class OperatingPoint:
    """Serve ``arms[i]`` with probability ``weights[i]`` (one arm, or a mixture of two)."""

    arms: tuple[Arm, ...]
    weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not 1 <= len(self.arms) <= 2 or len(self.weights) != len(self.arms):
            raise InvalidInput("operating point: one or two arms, with one weight each")
        if any(not (0.0 <= w <= 1.0) for w in self.weights) or abs(sum(self.weights) - 1.0) > 1e-9:
            raise InvalidInput(f"operating point: 'weights' must lie in [0, 1] and sum to 1, got {self.weights}")

    @classmethod
    def router(cls, lam: float) -> OperatingPoint:
        """The router alone at ``lam``."""
        return cls((Arm(lam=lam),))

    def map_lams(self, fn: Callable[[float], float]) -> OperatingPoint:
        """The same point with every router arm's ``lam`` replaced by ``fn(lam)`` (fixed models unchanged): how a
        budget or a quality floor moves the cost weight of a calibrated mixture."""
        arms = tuple(Arm(lam=fn(a.lam)) if a.lam is not None else a for a in self.arms)
        return OperatingPoint(arms, self.weights)

    @property
    def router_lam(self) -> float | None:
        """The router's ``lam`` when the point is the router alone, else ``None``."""
        only = self.arms[0] if len(self.arms) == 1 else None
        return only.lam if only is not None else None

    @property
    def label(self) -> str:
        """``router@0.002`` or ``0.70 x router@0.002 + 0.30 x model:gpt-4o``."""
        if len(self.arms) == 1:
            return self.arms[0].label
        return " + ".join(f"{w:.2f} x {a.label}" for a, w in zip(self.arms, self.weights))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"arms": [a.to_dict() for a in self.arms], "weights": list(self.weights), "label": self.label}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OperatingPoint:
        """Inverse of :meth:`to_dict`."""
        arms = tuple(Arm(lam=a.get("lam"), model=a.get("model")) for a in raw["arms"])
        return cls(arms, tuple(float(w) for w in raw["weights"]))


TargetKind = Literal["quality", "budget"]


@dataclass(frozen=True)
class Target:
    """A user's target (see the module docstring). ``value`` is a fraction of the reference's quality for
    ``quality``; for ``budget`` it is USD per 1,000 requests, or a share of the reference's cost when ``relative``."""

    kind: TargetKind
    value: float
    reference: str | None = None
    relative: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.value) and self.value > 0):
            raise InvalidInput(f"target: the value must be a number > 0, got {self.value}")
        if self.kind == "quality" and self.value > 1.5:
            raise InvalidInput(f"target: a quality target is a fraction of the reference's quality, got {self.value}")

    @classmethod
    def parse(cls, text: str) -> Target:
        """``parity[:MODEL]``, ``quality:FRACTION[:MODEL]``, ``budget:USD_PER_1K`` or ``budget:PCT%[:MODEL]``."""
        head, _, rest = text.strip().partition(":")
        try:
            if head == "parity":
                return cls("quality", 1.0, rest or None)
            value, _, model = rest.partition(":")
            if head == "quality":
                return cls("quality", float(value), model or None)
            if head == "budget":
                if value.endswith("%"):
                    return cls("budget", float(value[:-1]) / 100.0, model or None, relative=True)
                if model:
                    raise InvalidInput("an absolute budget names no model")
                return cls("budget", float(value))
        except ValueError as exc:
            raise InvalidInput(f"target: cannot read {text!r}: {exc}") from exc
        forms = "parity[:MODEL], quality:FRACTION[:MODEL], budget:USD_PER_1K or budget:PCT%[:MODEL]"
        raise InvalidInput(f"target: {text!r} is not {forms}")

    @property
    def label(self) -> str:
        """The target as it is written on the command line."""
        ref = f":{self.reference}" if self.reference else ""
        if self.kind == "quality":
            return f"parity{ref}" if self.value == 1.0 else f"quality:{self.value:g}{ref}"
        return f"budget:{self.value * 100:g}%{ref}" if self.relative else f"budget:{self.value:g}"

    def goal(self, reference_quality: float, reference_cost_per_1k: float) -> float:
        """The target in absolute terms: a quality floor, or a cost ceiling in USD per 1,000 requests."""
        if self.kind == "quality":
            return self.value * reference_quality
        return self.value * reference_cost_per_1k if self.relative else self.value


@dataclass(frozen=True)
class ArmValue:
    """An arm's mean quality and cost (USD per 1,000 requests) on validation data."""

    arm: Arm
    quality: float
    cost_per_1k: float


@dataclass(frozen=True)
class Choice:
    """The operating point chosen for a target, its validation quality and cost, and whether it meets the target."""

    point: OperatingPoint
    quality: float
    cost_per_1k: float
    met: bool


def upper_hull(values: Sequence[ArmValue]) -> list[ArmValue]:
    """The efficient frontier: the upper convex hull of (cost, quality), cheapest first, quality rising."""
    pts = sorted(values, key=lambda v: (v.cost_per_1k, -v.quality))
    hull: list[ArmValue] = []
    for v in pts:
        if hull and v.quality <= hull[-1].quality:
            continue  # dominated: costs at least as much for no more quality
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or below the segment a -> v
            cross = (b.cost_per_1k - a.cost_per_1k) * (v.quality - a.quality) - (b.quality - a.quality) * (
                v.cost_per_1k - a.cost_per_1k
            )
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(v)
    return hull


def _mix(a: ArmValue, b: ArmValue, w: float, met: bool) -> Choice:
    """``(1 - w) a + w b``."""
    if w <= 1e-12:
        return Choice(OperatingPoint((a.arm,)), a.quality, a.cost_per_1k, met)
    if w >= 1 - 1e-12:
        return Choice(OperatingPoint((b.arm,)), b.quality, b.cost_per_1k, met)
    return Choice(
        OperatingPoint((a.arm, b.arm), (1.0 - w, w)),
        (1 - w) * a.quality + w * b.quality,
        (1 - w) * a.cost_per_1k + w * b.cost_per_1k,
        met,
    )


def choose(values: Sequence[ArmValue], kind: TargetKind, goal: float) -> Choice:
    """The cheapest hull point with quality >= ``goal`` (``quality``), or the best one costing <= ``goal``
    (``budget``). When no point meets it, the closest one (the best quality, or the cheapest) with ``met=False``."""
    hull = upper_hull(values)
    if not hull:
        raise InvalidInput("operating point: no arms to choose from")
    if kind == "quality":
        if hull[-1].quality < goal:
            return _mix(hull[-1], hull[-1], 0.0, False)
        i = next(i for i, v in enumerate(hull) if v.quality >= goal)
        if i == 0:
            return _mix(hull[0], hull[0], 0.0, True)
        a, b = hull[i - 1], hull[i]
        return _mix(a, b, (goal - a.quality) / (b.quality - a.quality), True)
    if hull[0].cost_per_1k > goal:
        return _mix(hull[0], hull[0], 0.0, False)
    i = max(i for i, v in enumerate(hull) if v.cost_per_1k <= goal)
    if i == len(hull) - 1:
        return _mix(hull[i], hull[i], 0.0, True)
    a, b = hull[i], hull[i + 1]
    return _mix(a, b, (goal - a.cost_per_1k) / (b.cost_per_1k - a.cost_per_1k), True)


def mixture(point: OperatingPoint, by_arm: dict[Arm, Floats]) -> Floats:
    """Combine per-arm arrays (distributions, per-event values) with the point's weights."""
    return np.asarray(sum(w * by_arm[a] for a, w in zip(point.arms, point.weights)), dtype=np.float64)
