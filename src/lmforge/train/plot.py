"""A validation curve against a baseline line (matplotlib, optional dependency)."""

from __future__ import annotations

from pathlib import Path

from lmforge.train.metrics import read_metrics


def validation_curve(metrics_path: str | Path) -> list[dict]:
    """(step, elapsed minutes, val_ppl) records of a run's `metrics.jsonl`, in order."""
    records = read_metrics(Path(metrics_path))
    t0 = records[0]["time"] if records else 0.0
    return [{"step": r["step"], "minutes": (r["time"] - t0) / 60, "val_ppl": r["val_ppl"]}
            for r in records if "val_ppl" in r]


def first_crossing(curve: list[dict], baseline: float) -> dict | None:
    """The first evaluation whose perplexity is at or below `baseline`, if any."""
    return next((p for p in curve if p["val_ppl"] <= baseline), None)


def plot_validation_curve(metrics_path: str | Path, baseline: float, baseline_label: str, out: str | Path,
                          title: str = "Validation perplexity") -> Path:
    """Write a PNG of validation perplexity over training minutes with the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = validation_curve(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([p["minutes"] for p in curve], [p["val_ppl"] for p in curve], marker="o", ms=3, label="lmforge LLaMA")
    ax.axhline(baseline, color="tab:red", linestyle="--", label=baseline_label)
    cross = first_crossing(curve, baseline)
    if cross:
        ax.axvline(cross["minutes"], color="gray", linestyle=":", label=f"crosses at {cross['minutes']:.0f} min")
    ax.set_yscale("log")
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("validation perplexity (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
