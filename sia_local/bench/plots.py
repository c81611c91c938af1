"""`sia bench`'s plots: judge against cost (the Pareto front marked), score against the steered share (entropy vs random
gating), and the entropy histogram with the calibrated thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def write_plots(rows: Sequence[dict[str, Any]], summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """judge_vs_cost.png (Pareto front marked), score_vs_ratio.png (entropy vs random gating), entropy_hist.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    front = set(summary["pareto_front"])
    for name, v in arms.items():
        on_front = name in front
        ax.errorbar(v.get("cost_vs_base", v["seconds_per_token"]), v["judge"], yerr=v["judge_se"], fmt="o",
                    color="tab:red" if on_front else "tab:blue", capsize=2)
        ax.annotate(name, (v.get("cost_vs_base", v["seconds_per_token"]), v["judge"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front_pts = sorted((v.get("cost_vs_base", v["seconds_per_token"]), v["judge"]) for n, v in arms.items() if n in front)
    if front_pts:
        ax.plot(*zip(*front_pts), "--", color="tab:red", linewidth=1, label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("cost: wall time per output token, relative to base (log)")
    ax.set_ylabel(f"judge score ({summary.get('setup', {}).get('judge', 'judge')})")
    ax.set_title("Alignment vs cost")
    fig.tight_layout()
    files.append(out_dir / "judge_vs_cost.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("reward", "judge")):
        for prefix, colour, label in (("sia@", "tab:green", "entropy gate (SIA)"), ("random@", "tab:orange", "random gate")):
            pts: list[tuple[float, float, float]] = sorted((v["ratio"], v[metric], v[f"{metric}_se"]) for n, v in arms.items() if n.startswith(prefix))
            if "base" in arms:
                pts = [(0.0, arms["base"][metric], arms["base"][f"{metric}_se"])] + pts
            if "dense" in arms:
                pts.append((1.0, arms["dense"][metric], arms["dense"][f"{metric}_se"]))
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, fmt="-o", color=colour, label=label, capsize=2)
        ax.set_xlabel("realised steering ratio")
        ax.set_ylabel(metric)
        ax.legend()
    fig.suptitle("Score vs share of steered tokens")
    fig.tight_layout()
    files.append(out_dir / "score_vs_ratio.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    entropies = [h for r in rows if r["arm"] == "base" for h in r.get("entropies", [])]
    fig, ax = plt.subplots(figsize=(7, 4))
    if entropies:
        ax.hist(entropies, bins=40, color="tab:gray")
    for name, v in arms.items():
        if name.startswith("sia@") and v.get("tau") is not None:
            ax.axvline(v["tau"], linestyle="--", linewidth=1)
            ax.annotate(f"tau {name[4:]}", (v["tau"], ax.get_ylim()[1] * 0.9), rotation=90, fontsize=7)
    ax.set_xlabel("entropy of the top-k at T=1 (nats), base decoding")
    ax.set_ylabel("tokens")
    ax.set_title("Per-token entropy, with the calibrated thresholds")
    fig.tight_layout()
    files.append(out_dir / "entropy_hist.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)
    return files
