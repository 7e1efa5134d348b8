"""The demo, ``make demo``: train on the shared benchmark, then evaluate and report on prompts never seen."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.artifacts import PolicyArtifact
from router_ml.atomic import atomic_write_text
from router_ml.contracts import load_benchmark
from router_ml.cost_model import estimate_tokens
from router_ml.embed import Embedder
from router_ml.evaluation import Evaluation
from router_ml.features import FeatureConfig
from router_ml.frontier import hull_quality
from router_ml.fullinfo import FullInfo
from router_ml.operating import Target
from router_ml.policy import Policy, PolicyConfig
from router_ml.registry import CHAMPION, PolicyRegistry
from router_ml.replay import ReplayResult, best_single, replay_distribution, single_models
from router_ml.simulate import simulate
from router_ml.split import TEST_FRACTION, split_by_hash
from training.evaluate import evaluate_artifact, format_report, metrics
from training.pipelines import TrainOutcome, catalog_for_benchmark, run_train, write_parquet


def holdout_report(policy: Policy, embedder: Embedder, table: FullInfo) -> dict[str, Any]:
    """Exact replay of ``policy`` on held-out prompts against every single model."""
    embeddings = embedder.encode(table.prompts, progress=True)
    tokens = [estimate_tokens(p) for p in table.prompts]
    probs = policy.predict_many(embeddings, prompt_tokens=tokens)
    greedy = replay_distribution(
        table, policy.predict_many(embeddings, prompt_tokens=tokens, greedy=True), "router-ml (greedy)"
    )
    expected = replay_distribution(table, probs, "router-ml (exploring)")
    best = best_single(table)
    singles = sorted(single_models(table), key=lambda r: -r.quality)
    mix = {m: float(s) for m, s in zip(table.models, np.bincount(probs.argmax(axis=1), minlength=len(table.models)))}
    hull = hull_quality([(s.cost_usd, s.quality) for s in singles], greedy.cost_usd)
    return {
        "n_prompts": len(table.prompt_ids),
        "policy": greedy.to_dict(),
        "policy_exploring": expected.to_dict(),
        "best_single": best.to_dict(),
        "quality_vs_best": greedy.quality - best.quality,
        "cost_ratio_vs_best": greedy.cost_usd / best.cost_usd if best.cost_usd > 0 else None,
        "hull_quality_at_cost": hull,
        "margin_over_hull": greedy.quality - hull,
        "singles": [s.to_dict() for s in singles],
        "model_mix": {m: n for m, n in sorted(mix.items(), key=lambda kv: -kv[1]) if n > 0},
    }


ALSO = ("parity", "quality:0.975", "budget:25%", "budget:10%")
"""The targets the demo also calibrates on the same logs and replays on TEST (only its own is registered)."""


def target_replays(outcome: TrainOutcome, embedder: Embedder, table: FullInfo, targets: Sequence[str]) -> list[Any]:
    """For each target: the point calibrated on the training logs alone, replayed exactly on held-out prompts, with
    the reference's quality and cost there and the single-model hull at the cost spent."""
    assert outcome.calibrator is not None
    embeddings = embedder.encode(table.prompts)
    tokens = [estimate_tokens(p) for p in table.prompts]
    singles = [(s.cost_usd, s.quality) for s in single_models(table)]
    rows = []
    for label in targets:
        cal = outcome.calibrator.report(Target.parse(label))
        r = replay_distribution(
            table, outcome.policy.at(cal.point).predict_many(embeddings, prompt_tokens=tokens, greedy=True), label
        )
        ref = table.models.index(cal.reference)
        ref_q, ref_c = float(np.nanmean(table.quality[:, ref])), float(np.nanmean(table.cost[:, ref]))
        rows.append(
            {
                "target": cal.target,
                "reference": cal.reference,
                "point": cal.point.label,
                "verdict": cal.verdict(),
                "quality": r.quality,
                "cost_usd": r.cost_usd,
                "quality_frac": r.quality / ref_q,
                "cost_frac": r.cost_usd / ref_c if ref_c > 0 else None,
                "margin_over_hull": r.quality - hull_quality(singles, r.cost_usd),
            }
        )
    return rows


def format_targets(rows: list[dict[str, Any]]) -> str:
    """The targets table: what each asked-for point delivered on held-out prompts."""
    lines = [
        "targets calibrated on the training logs alone, replayed on the held-out prompts",
        "",
        f"{'target':<15} {'quality':>8} {'vs ref':>7} {'cost vs ref':>12} {'vs hull':>8}  point",
    ]
    for r in rows:
        cost = "n/a" if r["cost_frac"] is None else f"{r['cost_frac']:.1%}"
        lines.append(
            f"{r['target']:<15} {r['quality']:>8.4f} {r['quality_frac']:>7.3f} {cost:>12}"
            f" {r['margin_over_hull']:>+8.4f}  {r['point']}"
        )
    return "\n".join(lines)


def format_holdout(report: dict[str, Any]) -> str:
    """A terminal table of the held-out replay."""
    rows: list[ReplayResult] = [
        ReplayResult(**report["policy"]),
        ReplayResult(**report["policy_exploring"]),
        *[ReplayResult(**s) for s in report["singles"][:8]],
    ]
    best = ReplayResult(**report["best_single"])
    lines = [f"held-out replay on {report['n_prompts']} prompts the policy never saw", ""]
    lines.append(f"{'router':<28} {'quality':>8} {'$ / 1k req':>11} {'cost vs best':>13}")
    for r in rows:
        ratio = f"{r.cost_usd / best.cost_usd:>12.1%}" if best.cost_usd > 0 else f"{'n/a':>12}"
        lines.append(f"{r.router:<28} {r.quality:>8.4f} {r.cost_usd * 1000:>11.4f} {ratio}")
    lines.append("")
    lines.append(
        f"single-model hull at the router's cost (the best mix of two single models): "
        f"{report['hull_quality_at_cost']:.4f}; router-ml's margin over it: {report['margin_over_hull']:+.4f}"
    )
    mix = ", ".join(f"{m} {int(n)}" for m, n in list(report["model_mix"].items())[:6])
    lines.append(f"greedy model mix: {mix}")
    return "\n".join(lines)


DEMO_EVENTS_PER_PROMPT = 12.0
"""Uniformly logged events per TRAIN prompt the demo simulates."""


def run_demo(
    benchmark: Path,
    *,
    out_dir: Path,
    config: PolicyConfig,
    features: FeatureConfig,
    embedder: Embedder,
    registry: PolicyRegistry,
    target: Target | None,
    events_per_prompt: float = DEMO_EVENTS_PER_PROMPT,
    passes: int = 1,
    catalog_path: Path | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], str]:
    """The main job: split prompts 80/20 by hash, simulate uniform traffic on TRAIN, train a policy and calibrate
    it to ``target`` on those logs, register it (the first version becomes champion), replay it exactly on TEST
    against the single models and their hull, and estimate it counterfactually from uniform logs on TEST so the
    estimate can be read against the truth."""
    t0 = time.perf_counter()
    bench = load_benchmark(benchmark)
    catalog = catalog_for_benchmark(benchmark, bench, catalog_path)
    table = FullInfo.from_benchmark(bench, models=catalog.names)
    train_rows, test_rows = split_by_hash(table.prompt_ids, TEST_FRACTION)
    train_table, test_table = table.subset(train_rows), table.subset(test_rows)
    logs_path = out_dir / "train_logs.parquet"
    write_parquet(simulate(train_table, max(1, int(events_per_prompt * len(train_rows))), seed=seed), logs_path)
    catalog.save(out_dir / "catalog.toml")
    outcome = run_train(
        logs_path,
        catalog=catalog,
        config=config,
        features=features,
        passes=passes,
        embedder=embedder,
        registry=registry,
        target=target,
        extra_params={"benchmark": str(benchmark), "split": f"sha256(prompt_id) < {TEST_FRACTION} is test"},
    )
    report = holdout_report(outcome.policy, embedder, test_table)
    report["targets"] = target_replays(outcome, embedder, test_table, ALSO) if outcome.calibrator else []
    # The counterfactual check: what the evaluator estimates from bandit logs on TEST, against the replay truth.
    test_logs = simulate(test_table, max(1, int(events_per_prompt * len(test_rows))), seed=seed + 1)
    write_parquet(test_logs, out_dir / "test_logs.parquet")
    evaluation = evaluate_artifact(PolicyArtifact(outcome.policy, embedder=embedder.spec), test_logs, embedder)
    report["counterfactual"] = counterfactual_check(evaluation, report)
    _record(registry, outcome, report, evaluation)
    report.update(
        {
            "calibration": outcome.calibration.to_dict() if outcome.calibration else None,
            "version": outcome.version.version,
            "run_id": outcome.version.run_id,
            "train_events": outcome.report.n_events,
            "train_events_per_second": outcome.report.events_per_second,
            "seconds": time.perf_counter() - t0,
        }
    )
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    calibrated = outcome.calibration.format() + "\n\n" if outcome.calibration else ""
    targets = format_targets(report["targets"]) + "\n\n" if report["targets"] else ""
    table_text = format_report(evaluation, title="counterfactual estimate of the same policy from uniform logs on TEST")
    return report, calibrated + format_holdout(report) + "\n\n" + targets + table_text


def counterfactual_check(evaluation: Evaluation, report: dict[str, Any]) -> dict[str, Any]:
    """The evaluator's estimate from uniform logs on TEST beside the exact replay's truth."""
    return {
        "n_events": evaluation.n_events,
        "dr_quality": asdict(evaluation.policy.headline("quality")),
        "dr_cost_usd": asdict(evaluation.policy.headline("cost_usd")),
        "truth_quality": report["policy_exploring"]["quality"],
        "truth_cost_usd": report["policy_exploring"]["cost_usd"],
        "savings_vs_best": evaluation.savings.to_dict(),
    }


def _record(registry: PolicyRegistry, outcome: TrainOutcome, report: dict[str, Any], evaluation: Evaluation) -> None:
    """The held-out figures on the version's run; the first version becomes champion."""
    registry.log_metrics(
        outcome.version.run_id,
        {
            "holdout_quality": report["policy"]["quality"],
            "holdout_cost_usd": report["policy"]["cost_usd"],
            "holdout_best_single_quality": report["best_single"]["quality"],
            "holdout_best_single_cost_usd": report["best_single"]["cost_usd"],
            **metrics(evaluation),
        },
    )
    if not any(CHAMPION in v.aliases for v in registry.versions()):
        registry.promote(outcome.version.version)
