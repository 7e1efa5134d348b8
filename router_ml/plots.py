"""Figures: the cost-quality frontier of every router, as a full view and a zoom on the frontier, with router-ml's
operating points (mean and one standard deviation over seeds) where the result has them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router_ml.atomic import atomic_write_with

_STYLE: dict[str, dict[str, Any]] = {
    "router_ml": dict(color="#d62728", lw=2.5, marker="o", ms=4, label="router-ml (online bandit)"),
    "router_ml_offline": dict(color="#ff9896", lw=1.8, marker="o", ms=3, label="router-ml (offline, uniform logs)"),
    "per_category": dict(color="#1f77b4", lw=1.5, marker="s", ms=3, ls="--", label="per-category table (full info)"),
    "single_model_hull": dict(color="#2ca02c", lw=3, alpha=0.35, label="single-model hull (best mix of two models)"),
    "oracle": dict(color="#7f7f7f", lw=1.2, ls=":", marker=".", label="hindsight oracle"),
}
_DEFAULT_STYLE: dict[str, Any] = dict(color="#9467bd", lw=1.5, marker="^", ms=3, ls="-.")


def frontier_plot(result: dict[str, Any], path: str | Path) -> None:
    """Quality against cost (as a fraction of the best single model's cost, log scale) for every router.

    Left: everything, single models and the oracle included. Right: the same curves zoomed on the
    region around the best single model, where the savings are read.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = result["best_single"]
    ref = best["cost"]
    routers = result["routers"]
    singles = {k: v for k, v in routers.items() if k.startswith("single:")}
    curves = {k: v for k, v in routers.items() if k not in singles}
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), dpi=110)
    for ax in axes:
        xs = [v["points"][0][0] / ref for v in singles.values()]
        ys = [v["points"][0][1] for v in singles.values()]
        ax.scatter(xs, ys, s=18, color="#2ca02c", alpha=0.7, label="single models", zorder=3)
        for name, v in sorted(singles.items(), key=lambda kv: -kv[1]["q_max"])[:4]:
            c, q = v["points"][0]
            ax.annotate(
                name.removeprefix("single:"), (c / ref, q), fontsize=7, xytext=(4, -9), textcoords="offset points"
            )
        for name, v in curves.items():
            pts = sorted((c / ref, q) for c, q in v["points"])
            style = dict(_STYLE.get(name, {**_DEFAULT_STYLE, "label": f"{name} (full info)"}))
            label = str(style.pop("label"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
        ax.axhline(best["quality"], color="black", lw=0.8, alpha=0.6)
        ax.axhline(0.975 * best["quality"], color="black", lw=0.6, ls="--", alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(f"mean cost per prompt, as a fraction of {best['model']}'s (log scale)")
        ax.grid(True, which="both", alpha=0.25)
    full, zoom = axes
    markers = {"parity": "o", "quality:0.975": "s", "budget:10%": "v", "budget:25%": "^"}
    for label, op in result.get("operating_points", {}).get("router_ml", {}).items():
        zoom.errorbar(
            op["cost_frac"],
            op["quality"],
            xerr=op["cost_frac_sd"],
            yerr=op["quality_sd"],
            fmt=markers.get(label, "D"),
            color="black",
            mfc="#d62728",
            ms=8,
            capsize=3,
            zorder=6,
            label=f"router-ml at {label} (chosen on TRAIN; mean ± sd over seeds)",
        )
    full.set_ylabel("mean quality on held-out prompts")
    full.set_title("All routers and single models", fontsize=10)
    non_oracle = [q for k, v in curves.items() if k != "oracle" for _, q in v["points"]]
    zoom.set_ylim(0.9 * best["quality"], max([*non_oracle, best["quality"]]) + 0.015)
    zoom.set_xlim(0.02, 1.3)
    zoom.text(0.021, best["quality"] + 0.002, f"{best['model']} (solid), 97.5% of it (dashed)", fontsize=8)
    zoom.set_title("Zoom: where the routers match the best single model", fontsize=10)
    zoom.legend(fontsize=8, loc="lower right")
    parity = result.get("operating_points", {}).get("router_ml", {}).get("parity")
    title = "Cost-quality frontiers on held-out prompts (seed-averaged)"
    if parity:
        title += (
            f": router-ml asked for {best['model']}'s quality gets {parity['quality_frac']:.1%} of it at "
            f"{parity['cost_frac']:.1%} of its cost, from bandit feedback only"
        )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
