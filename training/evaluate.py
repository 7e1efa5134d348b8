"""The evaluate and promote jobs: a policy's counterfactual savings report on logged traffic, and promotion gated on it.

``run_evaluate`` loads a policy (registry version, alias or folder) and validated logs, embeds the
prompts with the policy's own embedder behind the on-disk cache, runs
:func:`router_ml.evaluation.evaluate_policy`, writes the JSON report atomically and, for a
registered version, logs the headline figures to its MLflow run (``eval_*`` metrics, the logs'
SHA-256 as the ``eval_data_sha256`` tag).

``run_promote`` moves an alias (default ``champion``) only when the challenger clearly beats the
version that holds it: both are evaluated on the same logs with the challenger's ``lam``, and the
challenger's DR reward lower bound must exceed the holder's DR reward estimate. ``force`` overrides
and says so in the version's tags.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from router_ml import settings
from router_ml.artifacts import PolicyArtifact
from router_ml.atomic import atomic_write_text
from router_ml.contracts import load_logs
from router_ml.embed import Embedder, EmbeddingCache
from router_ml.estimators import Estimate
from router_ml.evaluation import (
    Evaluation,
    GateDecision,
    LoggedEvents,
    TargetEstimates,
    estimator_set,
    evaluate_policy,
    gate,
)
from router_ml.learn import file_fingerprint
from router_ml.registry import CHAMPION, PolicyRegistry, VersionInfo, load_policy
from training.pipelines import EmbedderOptions

PROMOTION_TAG = "promotion_"


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy and where it came from: ``label`` is the version number or ``file:<folder>``."""

    artifact: PolicyArtifact
    label: str
    version: VersionInfo | None
    registry: PolicyRegistry | None


def load(ref: str, tracking_uri: str | None = None) -> LoadedPolicy:
    """A policy from a folder (no registry is opened), or from the registry (version, alias, ``models:/...``)."""
    if Path(ref).is_dir():
        artifact, label = load_policy(ref)
        return LoadedPolicy(artifact, label, None, None)
    registry = PolicyRegistry(tracking_uri)
    artifact, info = registry.load(ref)
    return LoadedPolicy(artifact, info.version, info, registry)


class _Embedders:
    """The embedder each policy was trained with, behind the shared cache; each is built once."""

    def __init__(self, options: EmbedderOptions) -> None:
        self.options = options
        self._built: dict[tuple[str, str | None], Embedder] = {}

    def for_policy(self, artifact: PolicyArtifact) -> Embedder:
        key = (artifact.embedder, artifact.embedder_path)
        if key not in self._built:
            cache = EmbeddingCache(self.options.cache or settings.embedding_cache_path())
            self._built[key] = artifact.build_embedder(
                threads=self.options.threads, batch_size=self.options.batch_size, cache=cache
            )
        return self._built[key]


def evaluate_artifact(
    artifact: PolicyArtifact,
    logs: pl.DataFrame,
    embedder: Embedder,
    *,
    lam: float | None = None,
    clip: float | None = None,
) -> Evaluation:
    """Map validated logs onto the policy's catalog, embed the prompts (with a progress bar) and evaluate."""
    events = LoggedEvents.from_logs(logs, artifact.policy.catalog)
    embeddings = embedder.encode(events.prompts, progress=True)
    return evaluate_policy(artifact.policy, events, embeddings, lam=lam, clip=clip)


def metrics(evaluation: Evaluation) -> dict[str, float]:
    """The headline figures as ``eval_*`` MLflow metrics (costs in USD per request; non-finite ones left out)."""
    out: dict[str, float] = {
        "eval_n_events": float(evaluation.n_events),
        "eval_n_ungraded": float(evaluation.n_ungraded),
        "eval_lam": evaluation.lam,
        "eval_ess": evaluation.policy.ess,
    }
    for prefix, target in (("eval_", evaluation.policy), ("eval_greedy_", evaluation.greedy)):
        for outcome in ("reward", "quality", "cost_usd"):
            dr = target.headline(outcome)
            out |= _triple(f"{prefix}dr_{outcome}", dr)
            out[f"{prefix}snips_{outcome}"] = getattr(target, outcome)["snips"].value
    for outcome in ("reward", "quality", "cost_usd"):
        out[f"eval_logging_{outcome}"] = evaluation.logging.headline(outcome).value
        out[f"eval_best_single_dr_{outcome}"] = evaluation.best_single.headline(outcome).value
    out |= _triple("eval_cost_saved_vs_best", evaluation.savings.cost_saved_usd["dr"])
    out |= _triple("eval_quality_vs_best", evaluation.savings.quality_diff["dr"])
    out |= _triple("eval_greedy_cost_saved_vs_best", evaluation.greedy_savings.cost_saved_usd["dr"])
    out |= _triple("eval_greedy_quality_vs_best", evaluation.greedy_savings.quality_diff["dr"])
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def _triple(name: str, est: Estimate) -> dict[str, float]:
    return {name: est.value, f"{name}_low": est.low, f"{name}_high": est.high}


@dataclass(frozen=True)
class EvaluateOutcome:
    """The evaluation, its JSON report, and the MLflow run it was logged to (if any)."""

    evaluation: Evaluation
    report: dict[str, Any]
    run_id: str | None


def run_evaluate(
    ref: str,
    logs_path: Path,
    *,
    tracking_uri: str | None,
    embedder: EmbedderOptions,
    lam: float | None = None,
    clip: float | None = None,
    json_out: Path | None = None,
) -> EvaluateOutcome:
    """Evaluate a policy on a logged-traffic file; write ``json_out`` and log to the version's run if registered.

    The logs are validated before anything is loaded, and nothing is written or logged unless the
    whole evaluation succeeds.
    """
    t0 = time.perf_counter()
    estimator_set(clip)  # a bad --clip or --lam fails before anything is loaded or embedded
    if lam is not None and not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"evaluate: 'lam' must be a finite number >= 0, got {lam}")
    logs = load_logs(logs_path)
    loaded = load(ref, tracking_uri)
    evaluation = evaluate_artifact(
        loaded.artifact, logs, _Embedders(embedder).for_policy(loaded.artifact), lam=lam, clip=clip
    )
    sha = file_fingerprint(logs_path)
    report: dict[str, Any] = {
        "policy": {
            "ref": ref,
            "version": loaded.label,
            "run_id": loaded.version.run_id if loaded.version else None,
            "trained_lam": loaded.artifact.policy.config.lam,
            "embedder": loaded.artifact.embedder,
            "catalog": loaded.artifact.policy.catalog.names,
        },
        "logs": {"path": str(logs_path), "sha256": sha, "rows": logs.height},
        **evaluation.to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report, indent=2))
    run_id = None
    if loaded.version is not None and loaded.registry is not None:
        run_id = loaded.version.run_id
        loaded.registry.log_metrics(run_id, metrics(evaluation))
        tags = {"eval_data_sha256": sha, "eval_data_path": str(logs_path), "eval_best_single": evaluation.best_model}
        loaded.registry.set_run_tags(run_id, tags)
    return EvaluateOutcome(evaluation, report, run_id)


def _cell(est: Estimate, scale: float = 1.0) -> str:
    if not np.isfinite(est.value):
        return f"{'n/a':<25}"
    return f"{est.value * scale:.4f} [{est.low * scale:.4f}, {est.high * scale:.4f}]"


def format_report(evaluation: Evaluation, *, title: str, max_singles: int = 10) -> str:
    """A terminal table: DR estimates with intervals per target, then the paired savings versus the best model."""
    level = f"{1 - evaluation.alpha:.0%}"
    lines = [
        title,
        f"{evaluation.n_events:,} graded events ({evaluation.n_ungraded:,} ungraded skipped); "
        f"lam {evaluation.lam:g}; {level} intervals"
        + (f"; weights clipped at {evaluation.clip:g}" if evaluation.clip else ""),
        "DR is the headline (SNIPS beside it); DM is in the JSON only: its interval ignores the reward model's bias",
        "",
        f"{'target':<34} {'quality (DR)':<25} {'$ / 1k requests (DR)':<25} {'reward (DR)':<25} "
        f"{'reward (SNIPS)':<25} {'ESS':>7}",
    ]

    def row(t: TargetEstimates) -> str:
        snips = t.reward.get("snips")
        name = t.name + (" *" if t.model == evaluation.best_model else "")
        return (
            f"{name:<34} {_cell(t.headline('quality')):<25} {_cell(t.headline('cost_usd'), 1000.0):<25} "
            f"{_cell(t.headline('reward')):<25} {_cell(snips) if snips else '(on-policy mean)':<25} {t.ess:>7.0f}"
        )

    lines += [row(t) for t in (evaluation.policy, evaluation.greedy, evaluation.logging)]
    singles = sorted(evaluation.singles, key=lambda s: -s.headline("quality").value)
    lines += [row(t) for t in singles[:max_singles]]
    if len(singles) > max_singles:
        lines.append(f"... {len(singles) - max_singles} more single models in the JSON")
    lines += ["", f"* always-best model: {evaluation.best_model} (highest estimated quality)", ""]
    for s in (evaluation.savings, evaluation.greedy_savings):
        dr, sn = s.cost_saved_usd["dr"], s.cost_saved_usd["snips"]
        verb = "saves" if dr.value >= 0 else "costs"
        share = f" ({abs(s.cost_saved_share):.1%} of its cost)" if np.isfinite(s.cost_saved_share) else ""
        lines.append(
            f"{s.target} vs always {s.baseline}, paired on {s.n:,} events: {verb} ${abs(dr.value) * 1000:.4f} "
            f"per 1k requests{share}"
        )
        lines.append(f"    $ saved per 1k requests: DR {_cell(dr, 1000.0)}, SNIPS {_cell(sn, 1000.0)}")
        q = s.quality_diff["dr"]
        lines.append(f"    quality difference: DR {q.value:+.4f} [{q.low:+.4f}, {q.high:+.4f}]: {s.verdict()}")
    return "\n".join(lines)


class PromotionRefused(Exception):
    """The challenger did not clearly beat the version holding the alias; the alias is unchanged."""


@dataclass(frozen=True)
class PromotionOutcome:
    """What promote did: ``gate`` is ``no-previous``, ``passed``, ``forced`` or ``unchanged``."""

    version: VersionInfo
    previous: VersionInfo | None
    gate: str
    decision: GateDecision | None


def run_promote(
    ref: str,
    *,
    registry: PolicyRegistry,
    alias: str = CHAMPION,
    logs_path: Path | None = None,
    force: bool = False,
    embedder: EmbedderOptions | None = None,
) -> PromotionOutcome:
    """Point ``alias`` at ``ref`` if nothing holds it, or if the challenger clearly beats the holder on ``logs_path``.

    Raises :class:`PromotionRefused` when the gate says no (unless ``force``), and ``ValueError``
    when a holder exists but no logs were given (unless ``force``). A refusal changes nothing.
    """
    challenger = registry.resolve(ref)
    holder = registry.aliased(alias)
    if holder is not None and holder.version == challenger.version:
        return PromotionOutcome(challenger, holder, "unchanged", None)
    if holder is None:
        return _promote(registry, challenger, alias, None, "no-previous", {})
    if logs_path is None:
        if not force:
            raise ValueError(
                f"promote: version {holder.version} is '{alias}'; pass --logs FILE to compare version "
                f"{challenger.version} with it on logged traffic, or --force to promote without a comparison"
            )
        return _promote(registry, challenger, alias, holder, "forced", {})

    logs = load_logs(logs_path)
    embedders = _Embedders(embedder or EmbedderOptions())
    mine = registry.load(challenger.version)[0]
    theirs = registry.load(holder.version)[0]
    lam = mine.policy.config.lam
    challenger_eval = evaluate_artifact(mine, logs, embedders.for_policy(mine), lam=lam)
    holder_eval = evaluate_artifact(theirs, logs, embedders.for_policy(theirs), lam=lam)
    decision = gate(challenger_eval, holder_eval)
    c, h = decision.challenger, decision.holder
    figures = {
        "lam": f"{lam:g}",
        "n_events": str(decision.n_events),
        "logs_sha256": file_fingerprint(logs_path),
        "dr_reward": f"{c.value:.6f}",
        "dr_reward_low": f"{c.low:.6f}",
        "dr_reward_high": f"{c.high:.6f}",
        "previous_dr_reward": f"{h.value:.6f}",
    }
    if decision.passed:
        return _promote(registry, challenger, alias, holder, "passed", figures, decision)
    if force:
        return _promote(registry, challenger, alias, holder, "forced", figures, decision)
    raise PromotionRefused(
        f"version {challenger.version}'s DR reward {c.value:.4f} [{c.low:.4f}, {c.high:.4f}] does not clear "
        f"version {holder.version}'s {h.value:.4f} (the current '{alias}'; lam {lam:g}, {decision.n_events:,} "
        f"events of {logs_path}): the lower bound must exceed it. '{alias}' is unchanged; --force overrides"
    )


def _promote(
    registry: PolicyRegistry,
    challenger: VersionInfo,
    alias: str,
    holder: VersionInfo | None,
    gate_result: str,
    figures: dict[str, str],
    decision: GateDecision | None = None,
) -> PromotionOutcome:
    """Move the alias and record how: ``promotion_*`` tags on the version, replacing any from an earlier promotion."""
    tags = {
        "gate": gate_result,
        "forced": "true" if gate_result == "forced" else "false",
        "alias": alias,
        **({"previous": holder.version} if holder else {}),
        **figures,
    }
    tags = {f"{PROMOTION_TAG}{k}": v for k, v in tags.items()}
    info = registry.promote(challenger.version, alias, tags=tags)
    stale = [k for k in info.tags if k.startswith(PROMOTION_TAG) and k not in tags]
    if stale:
        registry.delete_version_tags(info.version, stale)
        info = registry.resolve(info.version)
    return PromotionOutcome(info, holder, gate_result, decision)
