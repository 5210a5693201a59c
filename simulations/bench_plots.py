"""Benchmark plots (matplotlib, Agg): the seed paper's Figures 1-2 and 4 shapes, federated,
and cost versus closeness to RT.

- ``fig_forget_retain.png``: per main cell, FA and RA of the global model over the training
  rounds (solid) and of RT's rounds (dashed), then one marker pair per method after
  unlearning (circle: forgotten data, square: retained data);
- ``fig_affected_batches.png``: FA and RA after partial vs conventional amnesiac unlearning
  (and before / RT) against the % of the forgetting client's stored steps that held a
  forgotten sample (sample deletions of growing size: the sweep cells and the main cell);
- ``fig_cost_vs_gap.png``: unlearning time (% of RT) and storage (% of dense) against Avg.D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simulations.plots import amnesiac_colours  # noqa: E402

Row = dict[str, Any]
MARKERS = {"sample": "o", "class": "s", "client": "^"}
#: Colours for methods outside the amnesiac family (none repeats that family's red/green/purple).
PALETTE = (
    "tab:blue",
    "tab:orange",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "gold",
    "navy",
    "magenta",
    "teal",
    "lightcoral",
    "yellowgreen",
)


def method_colours(methods: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per method label (amnesiac family as in ``simulations.plots``)."""
    names = list(dict.fromkeys(m for m in methods if m not in ("before", "RT")))
    fixed = amnesiac_colours(names)
    others = [m for m in names if m not in fixed]
    return {**fixed, **{m: PALETTE[i % len(PALETTE)] for i, m in enumerate(others)}, "before": "grey", "RT": "black"}


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_forget_retain(cells: Sequence[Row], path: Path) -> Path | None:
    """Figures 1-2 shape: FA/RA through training and RT's rounds, then each method's result."""
    main = [c for c in cells if c["role"] == "main"]
    if not main:
        return None
    cols = min(3, len(main))
    rows_n = math.ceil(len(main) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6.2 * cols, 4.6 * rows_n), squeeze=False)
    colours = method_colours([r["method"] for c in main for r in c["result"]["rows"]])
    for ax, cell in zip(axes.ravel(), main, strict=False):
        curves, rows = cell["result"]["curves"], cell["result"]["rows"]
        xs, end = curves["round"], curves["round"][-1]
        for key, marker, label in (("FA", "o", "forgotten data"), ("RA", "s", "retained data")):
            ax.plot(
                xs,
                [100 * v for v in curves[f"train_{key}"]],
                color="black",
                marker=marker,
                markersize=4,
                fillstyle="full" if key == "FA" else "none",
                label=f"{label}, training (before unlearning)",
            )
            rt = [(x, 100 * v) for x, v in zip(xs, curves[f"RT_{key}"], strict=True) if v is not None]
            ax.plot(
                *zip(*rt, strict=True),
                color="grey",
                marker=marker,
                markersize=4,
                linestyle="--",
                linewidth=1,
                fillstyle="full" if key == "FA" else "none",
                label=f"{label}, RT (retrained)",
            )
        ax.axvline(end, color="grey", linestyle=":", linewidth=1)
        methods = [r for r in rows if r["method"] not in ("before", "RT")]
        for i, r in enumerate(methods):
            x = end + 0.6 + 0.9 * i / max(len(methods), 1) * 2
            ax.plot([x], [100 * r["FA"]], "o", color=colours[r["method"]], markersize=6)
            ax.plot([x], [100 * r["RA"]], "s", color=colours[r["method"]], markersize=5, fillstyle="none")
            ax.plot([], [], "o", color=colours[r["method"]], label=r["method"])
        ax.set_xticks([*xs, end + 1.5], [*map(str, xs), "after\nunlearning"])
        ax.set(title=f"{cell['cell_id']}", xlabel="training round", ylabel="accuracy (%)", ylim=(-3, 103))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(main) :]:
        ax.set_visible(False)
    handles = {h.get_label(): h for ax in axes.ravel() for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle(
        "Accuracy on forgotten (o) vs retained (□) data: training rounds, RT, and each method after unlearning"
    )
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1))
    return _save(fig, path)


def plot_affected_batches(rows: Sequence[Row], path: Path) -> Path | None:
    """Figure 4 shape: FA/RA vs % of the forgetting client's stored steps that were affected."""
    samples = [r for r in rows if r["deletion"] == "sample" and r["partition"] == "iid" and r["affected_fraction"]]
    groups = list(dict.fromkeys((r["dataset"], r["model"]) for r in samples if r["role"] == "sweep"))
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4.2 * len(groups)), squeeze=False)
    wanted = ("partial_amnesiac", "amnesiac", "before", "RT")
    colours = method_colours(list(wanted))
    for (dataset, model), pair in zip(groups, axes, strict=True):
        mine = [r for r in samples if (r["dataset"], r["model"]) == (dataset, model)]
        for ax, key, what in ((pair[0], "RA", "retained data (efficacy)"), (pair[1], "FA", "forgotten samples")):
            for method in wanted:
                pts = sorted((100 * r["affected_fraction"], 100 * r[key]) for r in mine if r["method"] == method)
                style = {"before": ":", "RT": "--"}.get(method, "-")
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", linestyle=style, color=colours[method], label=method)
            ax.set(
                title=f"{dataset} / {model}: accuracy on {what}",
                xlabel="affected steps (% of the client's stored steps)",
                ylabel="accuracy (%)",
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Efficacy vs % of affected batches (sample deletions of growing size on one client)")
    fig.tight_layout()
    return _save(fig, path)


def plot_cost_vs_gap(rows: Sequence[Row], path: Path) -> Path | None:
    """Time (% of RT) and storage (% of dense) against Avg.D to RT, per method and deletion kind."""
    points = [
        r for r in rows if r["method"] not in ("before", "RT") and r["role"] == "main" and not r["deferred_reasons"]
    ]
    if not points:
        return None
    colours = method_colours([r["method"] for r in points])
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(13, 5))
    for r in points:
        style = {"color": colours[r["method"]], "marker": MARKERS.get(r["deletion"], "o"), "linestyle": "none"}
        ax_t.plot([r["avg_gap_rt"]], [100 * (r["time_fraction_rt"] or 0)], **style)
        ax_s.plot([r["avg_gap_rt"]], [max(100 * (r["history_fraction"] or 0), 1e-3)], **style)
    for name, colour in colours.items():
        if any(r["method"] == name for r in points):
            ax_t.plot([], [], "o", color=colour, label=name)
    for kind, marker in MARKERS.items():
        ax_t.plot([], [], marker, color="grey", fillstyle="none", label=f"{kind} deletion")
    ax_t.axhline(1.0, color="red", linestyle=":", linewidth=1, label="target: 1% of RT")
    ax_s.axhline(5.0, color="red", linestyle=":", linewidth=1, label="target: 5% of dense")
    for ax in (ax_t, ax_s):
        ax.axvline(1.5, color="green", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("Avg.D to RT (percentage points; target 1.5, green)")
        ax.grid(alpha=0.3, which="both")
    ax_t.set(ylabel="unlearning wall time (% of RT)", title="Time vs closeness to RT")
    ax_s.set(ylabel="storage kept for unlearning (% of dense; 0.001 = none)", title="Storage vs closeness to RT")
    ax_t.legend(fontsize=7, ncol=2)
    ax_s.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(cells: Sequence[Row], rows: Sequence[Row], out: Path) -> list[Path]:
    """Every figure the finished cells support (written into ``out``)."""
    written = [
        plot_forget_retain(cells, out / "fig_forget_retain.png"),
        plot_affected_batches(rows, out / "fig_affected_batches.png"),
        plot_cost_vs_gap(rows, out / "fig_cost_vs_gap.png"),
    ]
    return [p for p in written if p is not None]
