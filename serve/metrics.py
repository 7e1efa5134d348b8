"""Prometheus metrics of the service, in their own registry (so several apps in one process stay apart).

Every label comes from a bounded set: endpoints from a fixed list, status codes, models from the catalog and
tenants from the configuration (anything else is counted as ``other``), so ``/metrics`` does not grow with
traffic, whatever clients send.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router_ml.savings import SavingsReport

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86400.0)
OTHER = "other"


class Metrics:
    """Requests, latency, choices, spend, feedback lag, learner state, background grading."""

    def __init__(self, *, tenants: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        self._tenants, self._models = frozenset(tenants), frozenset(models)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("router_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "router_request_seconds", "request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.choices = Counter("router_choices", "routing decisions per chosen model", ["model"], registry=r)
        self.fallbacks = Counter("router_fallbacks", "upstream attempts that failed over", ["model"], registry=r)
        self.spend = Counter("router_spend_usd", "spend in USD", ["model", "tenant"], registry=r)
        self.feedback_lag = Histogram(
            "router_feedback_lag_seconds", "decision to feedback delay", buckets=LAG_BUCKETS, registry=r
        )
        self.updates = Gauge("router_policy_updates", "online updates since the policy was loaded", registry=r)
        self.snapshots = Counter("router_snapshots", "policy snapshots registered in MLflow", registry=r)
        self.reloads = Counter("router_reloads", "policy reloads after the alias moved", registry=r)
        self.lam = Gauge("router_lambda", "effective cost weight (lambda plus the budget multiplier)", registry=r)
        self.savings = Gauge(
            "router_savings",
            "live doubly robust estimate against the reference model (figure: quality_diff, saved_usd_per_1k, "
            "router_quality, reference_quality; bound: value, low, high)",
            ["figure", "bound"],
            registry=r,
        )
        self.graded = Gauge("router_savings_graded", "graded decisions in the savings estimate", registry=r)
        self.floor = Gauge("router_quality_floor_factor", "the quality floor's factor on the cost weight", registry=r)
        self.grade_jobs = Counter(
            "router_grade_jobs",
            "background grading: jobs made (pending, skipped by the spend cap), retried, and ended (done, failed, "
            "superseded by a client's grade)",
            ["state"],
            registry=r,
        )
        self.grading_spend = Counter(
            "router_grading_spend_usd", "what grading (an LLM judge) cost in USD, apart from routed spend", ["grader"],
            registry=r,
        )

    def show_savings(self, report: SavingsReport, floor_factor: float) -> None:
        """Set the savings gauges from a report (unbounded interval ends are left out)."""
        figures = {
            "quality_diff": report.quality_diff,
            "saved_usd_per_1k": report.saved_per_1k,
            "router_quality": report.router_quality,
            "reference_quality": report.reference_quality,
        }
        for name, e in figures.items():
            for bound, value in (("value", e.value), ("low", e.low), ("high", e.high)):
                if math.isfinite(value):
                    self.savings.labels(name, bound).set(value)
        self.graded.set(report.n)
        self.floor.set(floor_factor)

    def model(self, name: str) -> str:
        """``name`` as a label: a catalog model, else ``other``."""
        return name if name in self._models else OTHER

    def tenant(self, name: str | None) -> str:
        """``name`` as a label: a configured tenant, else ``other``."""
        return name if name in self._tenants else OTHER

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return bytes(generate_latest(self.registry))
