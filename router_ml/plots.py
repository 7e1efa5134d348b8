"""Figures: the cost-quality frontier of every router in one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router_ml.atomic import atomic_write_with

_STYLE = {
    "router_ml": dict(color="#d62728", lw=2.5, marker="o", ms=4, label="router-ml (online bandit)"),
    "router_ml_offline": dict(color="#ff9896", lw=1.8, marker="o", ms=3, label="router-ml (offline, uniform logs)"),
    "per_category": dict(color="#1f77b4", lw=1.5, marker="s", ms=3, ls="--", label="per-category table (full info)"),
    "oracle": dict(color="#7f7f7f", lw=1.2, ls=":", marker=".", label="hindsight oracle"),
}


def frontier_plot(result: dict[str, Any], path: str | Path) -> None:
    """Quality against cost (fraction of the best single model's cost, log scale) for every router."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = result["best_single"]
    ref = best["cost"]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    singles = {k: v for k, v in result["routers"].items() if k.startswith("single:")}
    xs = [v["points"][0][0] / ref for v in singles.values()]
    ys = [v["points"][0][1] for v in singles.values()]
    ax.scatter(xs, ys, s=18, color="#2ca02c", alpha=0.7, label="single models", zorder=3)
    for name, v in sorted(singles.items(), key=lambda kv: -kv[1]["q_max"])[:4]:
        c, q = v["points"][0]
        ax.annotate(name.removeprefix("single:"), (c / ref, q), fontsize=7, xytext=(4, -8), textcoords="offset points")
    for name, v in result["routers"].items():
        if name in singles:
            continue
        pts = sorted((c / ref, q) for c, q in v["points"])
        style = dict(
            _STYLE.get(name, dict(color="#9467bd", lw=1.5, marker="^", ms=3, ls="-.", label=f"{name} (full info)"))
        )
        label = str(style.pop("label"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)  # type: ignore[arg-type]
    ax.axhline(best["quality"], color="black", lw=0.8, alpha=0.6)
    ax.axhline(0.975 * best["quality"], color="black", lw=0.6, ls="--", alpha=0.4)
    ax.text(min(xs), best["quality"] + 0.004, f"best single: {best['model']} (solid), 97.5% of it (dashed)", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"mean cost per prompt, as a fraction of {best['model']}'s (log scale)")
    ax.set_ylabel("mean quality on held-out prompts")
    r = result["routers"].get("router_ml")
    title = "Cost-quality frontiers on held-out prompts"
    if r:
        par = "not reached" if r["cost_at_parity"] is None else f"{r['cost_at_parity']:.0%}"
        title += f"\nrouter-ml reaches {best['model']}'s quality at {par} of its cost"
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
