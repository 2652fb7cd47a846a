"""The search's two figures: every trial's parameters against its validation score (with the confirmed
trials' fresh-seed outcomes), and each recipe's parameters against its fresh-seed pass rate."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from tinymnist.search.analysis import trained
from tinymnist.targets import LAST_K, TARGET, TARGET_ACC


def frontier_figure(exports: list[dict], confirmed: dict[str, dict[int, dict]], path: Path) -> None:
    """Parameters vs accuracy: every trained trial (its value: the level or the worst of its last K validation
    epochs, as its study scores; a pruned trial at
    its last epoch, hollow), and each confirmed trial's test accuracy over fresh seeds (mean, min-max bar)."""
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    markers = "osD^v<>"
    values = [t["value"] for e in exports for t in trained(e) if t["state"] == "complete"]
    low = max(97.0, min(values, default=97.0) - 0.2)
    for i, export in enumerate(exports):
        done = trained(export)
        complete = [t for t in done if t["state"] == "complete"]
        pruned = [t for t in done if t["state"] == "pruned"]
        if complete:
            ax.scatter([t["n_params"] for t in complete], [t["value"] for t in complete], marker=markers[i % 7],
                       s=28, alpha=0.8, label=f"{export['study']}: complete (validation)")
        if pruned:
            ax.scatter([t["n_params"] for t in pruned], [max(t["val_acc"][-1], low + 0.03) for t in pruned],
                       marker=markers[i % 7], s=28, facecolors="none", edgecolors="gray", alpha=0.7,
                       label=f"{export['study']}: pruned (validation, last epoch)")
        for number, figures in confirmed.get(export["study"], {}).items():
            finals = [s["final"] for s in figures["seeds"]]
            mean = sum(finals) / len(finals)
            ax.errorbar([figures["params"]], [mean], yerr=[[mean - min(finals)], [max(finals) - mean]],
                        fmt="*", color="crimson", markersize=14, capsize=4, zorder=5)
            ax.annotate(f"trial {number}: {figures['seeds_passing']}/{figures['seeds_run']} fresh seeds pass",
                        (figures["params"], mean), textcoords="offset points", xytext=(8, -14), fontsize=8,
                        color="crimson")
    ax.errorbar([], [], fmt="*", color="crimson", markersize=10, label="confirmed: test acc over fresh seeds")
    ax.axhline(TARGET_ACC, color="gray", linestyle="--", label=f"{TARGET} target (test)")
    ax.set(xlabel="parameters", ylabel="accuracy (%)", ylim=(low, 99.8),
           title="Search trials: value (level or worst of the last K epochs) on the validation split\n(pruned "
                 "trials below the "
                 "axis are drawn on its bottom edge)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def pass_rate_figure(rows: list[dict], front: list[dict], path: Path) -> None:
    """Parameters against the fresh-seed pass rate, with each rate's 95% interval; the front joined."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for r in rows:
        rate, (low, high) = 100 * r["passes"] / r["runs"], r["interval"]
        on = r in front
        ax.errorbar([r["params"]], [rate], yerr=[[rate - 100 * low], [100 * high - rate]], fmt="o" if on else ".",
                    color="crimson" if on else "gray", capsize=3, alpha=0.9 if on else 0.5)
        if on:
            ax.annotate(f"{r['label']} ({r['passes']}/{r['runs']})", (r["params"], rate), textcoords="offset points",
                        xytext=(6, -12), fontsize=7, color="crimson")
    ax.plot([r["params"] for r in front], [100 * r["passes"] / r["runs"] for r in front], color="crimson",
            drawstyle="steps-post", alpha=0.5)
    ax.set(xscale="log", xlabel="parameters", ylabel=f"seeds holding {TARGET} in each of the last {LAST_K} epochs (%)",
           ylim=(-5, 105), title="Recipes on fresh seeds (test set): pass rate with its 95% interval")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
