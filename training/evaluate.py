"""The evaluate and promote jobs: a policy's counterfactual savings report on logged traffic, and promotion gated on it.

``run_evaluate`` loads a policy (registry version, alias or folder) and validated logs, embeds the
prompts with the policy's own embedder behind the on-disk cache, runs
:func:`router_ml.evaluation.evaluate_policy`, writes the JSON report atomically and, for a
registered version, logs the headline figures to its MLflow run (``eval_*`` metrics, the logs'
SHA-256 as the ``eval_data_sha256`` tag).

``run_promote`` moves an alias (default ``champion``) only when the challenger clearly beats the
version that holds it: both are evaluated on the same logs with the challenger's ``lam``, and the
challenger's DR reward lower bound must exceed the holder's DR reward estimate. ``force`` overrides
and says so in the version's tags. Both return typed values (:class:`EvaluationReport`,
:class:`PromotionOutcome`) with a ``to_json``.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from router_ml import mlflow_schema
from router_ml.artifacts import PolicyArtifact
from router_ml.atomic import atomic_write_text
from router_ml.contracts import load_logs
from router_ml.embed import Embedder
from router_ml.encoders import Embedders
from router_ml.errors import InvalidInput
from router_ml.estimators import Estimate
from router_ml.evaluation import (
    Evaluation,
    GateDecision,
    TargetEstimates,
    estimator_set,
    evaluate_policy,
    gate,
)
from router_ml.events import LoggedEvents
from router_ml.learn import file_fingerprint
from router_ml.registry import CHAMPION, LoadedPolicy, PolicyRef, PolicyRegistry, VersionInfo, load_policy


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
class EvaluationReport:
    """An evaluation and what it was of: the policy (its reference, label and record), the logs (path, SHA-256,
    rows) and how long it took; ``run_id`` is the MLflow run it was logged to (None for a folder)."""

    ref: str
    loaded: LoadedPolicy
    logs_path: Path
    logs_sha256: str
    logs_rows: int
    evaluation: Evaluation
    seconds: float
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``policy``, ``logs``, the evaluation's own fields, ``seconds``."""
        artifact, version = self.loaded.artifact, self.loaded.version
        return {
            "policy": {
                "ref": self.ref,
                "version": self.loaded.label,
                "run_id": version.run_id if version else None,
                "trained_lam": artifact.policy.config.lam,
                "embedder": artifact.embedder.name,
                "catalog": artifact.policy.catalog.names,
            },
            "logs": {"path": str(self.logs_path), "sha256": self.logs_sha256, "rows": self.logs_rows},
            **self.evaluation.to_dict(),
            "seconds": round(self.seconds, 2),
        }

    def to_json(self) -> str:
        """The report as the JSON ``router-ml evaluate --json`` writes."""
        return json.dumps(self.to_dict(), indent=2)


def run_evaluate(
    ref: str,
    logs_path: Path,
    *,
    tracking_uri: str | None,
    embedders: Embedders,
    lam: float | None = None,
    clip: float | None = None,
    json_out: Path | None = None,
) -> EvaluationReport:
    """Evaluate a policy on a logged-traffic file; write ``json_out`` and log to the version's run if registered.

    The logs are validated before anything is loaded, and nothing is written or logged unless the
    whole evaluation succeeds.
    """
    t0 = time.perf_counter()
    estimator_set(clip)  # a bad --clip or --lam fails before anything is loaded or embedded
    if lam is not None and not (np.isfinite(lam) and lam >= 0):
        raise InvalidInput(f"evaluate: 'lam' must be a finite number >= 0, got {lam}")
    logs = load_logs(logs_path)
    parsed = PolicyRef.parse(ref)
    registry = None if parsed.kind == "folder" else PolicyRegistry(tracking_uri)
    loaded = load_policy(parsed, registry)
    evaluation = evaluate_artifact(
        loaded.artifact, logs, embedders.get(loaded.artifact.embedder), lam=lam, clip=clip
    )
    sha = file_fingerprint(logs_path)
    run_id = loaded.version.run_id if loaded.version is not None else None
    report = EvaluationReport(
        ref, loaded, logs_path, sha, logs.height, evaluation, time.perf_counter() - t0, run_id=run_id
    )
    if json_out is not None:
        atomic_write_text(json_out, report.to_json())
    if registry is not None and run_id is not None:
        registry.log_metrics(run_id, metrics(evaluation))
        tags = {
            mlflow_schema.TAG_EVAL_DATA_SHA256: sha,
            mlflow_schema.TAG_EVAL_DATA_PATH: str(logs_path),
            mlflow_schema.TAG_EVAL_BEST_SINGLE: evaluation.best_model,
        }
        registry.set_run_tags(run_id, tags)
    return report


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


class Gate(enum.Enum):
    """How a promotion went: the alias moved (``no-previous``, ``passed``, ``forced``) or did not (``unchanged``:
    the version already held it; ``refused``: the challenger did not clearly beat the holder)."""

    NO_PREVIOUS = "no-previous"
    PASSED = "passed"
    FORCED = "forced"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


@dataclass(frozen=True)
class PromotionOutcome:
    """What promote did: the challenger's version record (after the move), the version that held the alias, the
    :class:`Gate`, and the comparison on the logs when there was one."""

    version: VersionInfo
    previous: VersionInfo | None
    gate: Gate
    alias: str
    decision: GateDecision | None = None
    logs_path: Path | None = None

    @property
    def promoted(self) -> bool:
        """Did the alias move to the challenger?"""
        return self.gate in (Gate.NO_PREVIOUS, Gate.PASSED, Gate.FORCED)

    def summary(self) -> str:
        """One line for the terminal."""
        info, d, alias = self.version, self.decision, self.alias
        if self.gate is Gate.UNCHANGED:
            return f"{info.name} version {info.version} already is '{alias}'"
        if self.gate is Gate.REFUSED:
            assert d is not None and self.previous is not None
            c, h = d.challenger, d.holder
            return (
                f"version {info.version}'s DR reward {c.value:.4f} [{c.low:.4f}, {c.high:.4f}] does not clear "
                f"version {self.previous.version}'s {h.value:.4f} (the current '{alias}'; lam {d.lam:g}, "
                f"{d.n_events:,} events of {self.logs_path}): the lower bound must exceed it. '{alias}' is unchanged; "
                "--force overrides"
            )
        how = {Gate.NO_PREVIOUS: "no version held it", Gate.PASSED: "gate passed", Gate.FORCED: "forced"}[self.gate]
        if d is not None:
            how += (
                f": DR reward {d.challenger.value:.4f} [{d.challenger.low:.4f}, {d.challenger.high:.4f}] vs version "
                f"{self.previous.version if self.previous else '?'}'s {d.holder.value:.4f} (lam {d.lam:g})"
            )
        return f"{info.name} version {info.version} is now '{alias}' ({how})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = self.decision
        return {
            "version": self.version.version,
            "previous": self.previous.version if self.previous else None,
            "alias": self.alias,
            "gate": self.gate.value,
            "promoted": self.promoted,
            "decision": None
            if d is None
            else {
                "passed": d.passed,
                "lam": d.lam,
                "n_events": d.n_events,
                "challenger_dr_reward": [d.challenger.value, d.challenger.low, d.challenger.high],
                "holder_dr_reward": d.holder.value,
            },
        }

    def to_json(self) -> str:
        """The outcome as JSON."""
        return json.dumps(self.to_dict(), indent=2)


def run_promote(
    ref: str,
    *,
    registry: PolicyRegistry,
    alias: str = CHAMPION,
    logs_path: Path | None = None,
    force: bool = False,
    embedders: Embedders | None = None,
) -> PromotionOutcome:
    """Point ``alias`` at ``ref`` if nothing holds it, or if the challenger clearly beats the holder on ``logs_path``.

    A holder with no logs given is an error (unless ``force``); a challenger that does not clearly win is a
    :attr:`Gate.REFUSED` outcome (unless ``force``). Neither changes anything.
    """
    challenger = registry.resolve(ref)
    holder = registry.aliased(alias)
    if holder is not None and holder.version == challenger.version:
        return PromotionOutcome(challenger, holder, Gate.UNCHANGED, alias)
    if holder is None:
        return _promote(registry, challenger, alias, None, Gate.NO_PREVIOUS, {})
    if logs_path is None:
        if not force:
            raise InvalidInput(
                f"promote: version {holder.version} is '{alias}'; pass --logs FILE to compare version "
                f"{challenger.version} with it on logged traffic, or --force to promote without a comparison"
            )
        return _promote(registry, challenger, alias, holder, Gate.FORCED, {})
    decision = _compare(registry, challenger, holder, load_logs(logs_path), embedders or Embedders())
    c, h = decision.challenger, decision.holder
    figures = {
        "lam": f"{decision.lam:g}",
        "n_events": str(decision.n_events),
        "logs_sha256": file_fingerprint(logs_path),
        "dr_reward": f"{c.value:.6f}",
        "dr_reward_low": f"{c.low:.6f}",
        "dr_reward_high": f"{c.high:.6f}",
        "previous_dr_reward": f"{h.value:.6f}",
    }
    if decision.passed or force:
        gate = Gate.PASSED if decision.passed else Gate.FORCED
        return _promote(registry, challenger, alias, holder, gate, figures, decision, logs_path)
    return PromotionOutcome(challenger, holder, Gate.REFUSED, alias, decision, logs_path)


def _compare(
    registry: PolicyRegistry, challenger: VersionInfo, holder: VersionInfo, logs: pl.DataFrame, embedders: Embedders
) -> GateDecision:
    """Both versions evaluated on the same logs at the challenger's ``lam``, and the gate's verdict."""
    mine = registry.load(challenger.version)[0]
    theirs = registry.load(holder.version)[0]
    lam = mine.policy.config.lam
    challenger_eval = evaluate_artifact(mine, logs, embedders.get(mine.embedder), lam=lam)
    holder_eval = evaluate_artifact(theirs, logs, embedders.get(theirs.embedder), lam=lam)
    return gate(challenger_eval, holder_eval)


def _promote(
    registry: PolicyRegistry,
    challenger: VersionInfo,
    alias: str,
    holder: VersionInfo | None,
    gate_result: Gate,
    figures: dict[str, str],
    decision: GateDecision | None = None,
    logs_path: Path | None = None,
) -> PromotionOutcome:
    """Move the alias and record how: ``promotion_*`` tags on the version, replacing any from an earlier promotion."""
    tags = {
        "gate": gate_result.value,
        "forced": "true" if gate_result is Gate.FORCED else "false",
        "alias": alias,
        **({"previous": holder.version} if holder else {}),
        **figures,
    }
    prefix = mlflow_schema.PROMOTION_PREFIX
    tags = {f"{prefix}{k}": v for k, v in tags.items()}
    info = registry.promote(challenger.version, alias, tags=tags)
    stale = [k for k in info.tags if k.startswith(prefix) and k not in tags]
    if stale:
        registry.delete_version_tags(info.version, stale)
        info = registry.resolve(info.version)
    return PromotionOutcome(info, holder, gate_result, alias, decision, logs_path)
