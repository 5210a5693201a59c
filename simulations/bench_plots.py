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
        ax.set_ylim(bottom=0)  # a metric in [0, 100]: a std bar does not go below it
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(pooled) :]:
        ax.axis("off")
    fig.suptitle("Forget metric per label, mean ± std over seeds (RT dashed: the target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cost(pooled: Sequence[Row], path: Path) -> Path | None:
    """One panel per discriminating cell: each label's phase wall time as % of RT's run (log
    scale) against its forget-metric gap to RT. Methods get a colour each and a legend;
    fine-tune controls are small grey crosses; the dotted line is 1% of RT's time."""
    cells = [c for c in pooled if c["discriminating"]]
    labels = sorted({r["label"] for c in cells for r in c["rows"] if _plotted(r)})
    methods = [lab for lab in labels if not lab.startswith("finetune")]
    if not cells or not labels:
        return None
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(methods)}
    cols = min(3, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax, cell in zip(axes.flat, cells, strict=False):
        for r in filter(_plotted, cell["rows"]):
            x, y = 100 * r["ratio_cost_seconds"], r["forget_gap_rt"]
            if r["label"] in colours:
                ax.scatter(x, y, color=colours[r["label"]], s=40, label=r["label"], zorder=3)
            else:
                ax.scatter(x, y, color="tab:grey", marker="x", s=20, label="finetune (controls)", zorder=2)
        ax.axvline(1.0, ls=":", color="black", lw=1)
        ax.set_xscale("log")
        metric = cell["forget_metric"]
        ax.set(title=cell["cell"], xlabel="phase wall time (% of RT's run)", ylabel=f"{metric} gap to RT (points)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle("Cost and fidelity: lower left is cheap and close to RT (dotted: 1% of RT's time)")
    fig.tight_layout(rect=(0, 0.08 + 0.02 * math.ceil(len(handles) / 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plotted(row: Row) -> bool:
    return (
        row["label"] not in ("RT", "none")
        and isinstance(row.get("ratio_cost_seconds"), (int, float))
        and row["ratio_cost_seconds"] > 0
        and row.get("forget_gap_rt") is not None
    )


def write_plots(pooled: Sequence[Row], out: Path) -> list[Path]:
    """Write every plot; return the files written."""
    made = [plot_forget_metric(pooled, out / "forget_metric.png"), plot_cost(pooled, out / "cost.png")]
    return [p for p in made if p is not None]
