"""Benchmark plots (matplotlib, Agg): each cell's forget metric per label, and cost against fidelity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Row = dict[str, Any]
CONTROL_COLOURS = {"none": "tab:grey", "RT": "black", "finetune": "tab:olive"}


def _colour(label: str) -> str:
    return CONTROL_COLOURS.get(label.split("@", 1)[0], "tab:blue")


def plot_forget_metric(pooled: Sequence[Row], path: Path) -> Path | None:
    """One panel per cell: the forget metric per label (mean ± std over seeds), RT dashed."""
    if not pooled:
        return None
    cols = min(3, len(pooled))
    rows = math.ceil(len(pooled) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax, cell in zip(axes.flat, pooled, strict=False):
        labels = [r["label"] for r in cell["rows"]]
        means = [100 * (r["forget_value"] or 0.0) for r in cell["rows"]]
        stds = [100 * (r["forget_value_std"] or 0.0) for r in cell["rows"]]
        ax.bar(range(len(labels)), means, yerr=stds, capsize=3, color=[_colour(lab) for lab in labels])
        rt = next((r["forget_value"] for r in cell["rows"] if r["label"] == "RT"), None)
        if rt is not None:
            ax.axhline(100 * rt, ls="--", color="black", lw=1, label="RT")
        ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=7)
        flag = "" if cell["discriminating"] else " (not discriminating)"
        ax.set(title=f"{cell['cell']}{flag}", ylabel=f"{cell['forget_metric']} (%)")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(pooled) :]:
        ax.axis("off")
    fig.suptitle("Forget metric per label, mean ± std over seeds (RT dashed: the target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cost(pooled: Sequence[Row], path: Path) -> Path | None:
    """Phase wall time against the forget metric's gap to RT, one point per cell and label."""
    points = [
        (r["cost_seconds"], r["forget_gap_rt"], r["label"], cell["cell"])
        for cell in pooled
        for r in cell["rows"]
        if r["label"] not in ("RT", "none") and r["cost_seconds"] is not None and r["forget_gap_rt"] is not None
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for seconds, gap, label, cell in points:
        ax.scatter(seconds, gap, color=_colour(label))
        ax.annotate(f"{label}\n{cell}", (seconds, gap), fontsize=6)
    ax.set(xlabel="phase wall time (s)", ylabel="forget-metric gap to RT (points)", title="Cost and fidelity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(pooled: Sequence[Row], out: Path) -> list[Path]:
    """Write every plot; return the files written."""
    made = [plot_forget_metric(pooled, out / "forget_metric.png"), plot_cost(pooled, out / "cost.png")]
    return [p for p in made if p is not None]
