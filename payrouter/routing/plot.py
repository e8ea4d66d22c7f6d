"""Draw a router's cost-quality curve with its baselines (needs the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_curve"]


def plot_curve(result: dict[str, Any], path: str | Path) -> None:
    """Write a PNG of ``result`` (from `payrouter.routing.evaluate`): accuracy vs cost per prompt.

    Raises:
        ImportError: matplotlib is missing (``pip install 'payrouter[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'payrouter[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    pts = sorted(result["points"], key=lambda p: p["cost_usd"])
    ax.plot([p["cost_usd"] for p in pts], [p["accuracy"] for p in pts], "o-", label="payrouter router", zorder=3)
    baselines = result["baselines"]
    for name in ("tfidf_knn", "best_model_per_task"):
        if name in baselines:
            curve = sorted(baselines[name]["points"], key=lambda p: p["cost_usd"])
            ax.plot([p["cost_usd"] for p in curve], [p["accuracy"] for p in curve], ".--", label=name.replace("_", " "))
    mix = baselines["random_mixing"]
    ax.plot([p["cost_usd"] for p in mix], [p["accuracy"] for p in mix], ":", color="grey", label="random mixing")
    for model, v in baselines["single_models"].items():
        ax.scatter(v["cost_usd"], v["accuracy"], marker="x", color="black", zorder=4)
        ax.annotate(
            model.split("/")[-1], (v["cost_usd"], v["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    oracle = baselines["oracle"]
    ax.scatter(oracle["cost_usd"], oracle["accuracy"], marker="*", s=120, color="gold", label="oracle", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("average cost per prompt (USD, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"cost-quality on {result.get('rows')} unseen prompts (AIQ {result['aiq']:.3f})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
