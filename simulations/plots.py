"""Plots and tables of unlearning results, shared by the centralized and federated runners.

Inputs are the plain dicts the runners write to results.json (``runs`` rows, ``curves``,
``affected_batches``), so a plot can be redrawn from a results file alone::

    python -m simulations.plots results/central_quick/results.json

Accuracies are fractions in [0, 1] in the data and shown in percent.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Row = dict[str, Any]

#: Fixed colours of the amnesiac rows; other partial_amnesiac@rho rows take the next of EXTRA_COLOURS.
COLOURS: dict[str, str] = {"amnesiac": "tab:red", "amnesiac+ft": "tab:purple", "partial_amnesiac": "tab:green"}
EXTRA_COLOURS = ("tab:olive", "tab:cyan", "tab:brown", "tab:pink")


def amnesiac_colours(labels: Iterable[str]) -> dict[str, str]:
    """Colour per amnesiac-family row label (amnesiac, amnesiac+ft, partial_amnesiac[@rho]), in order."""
    wanted = [x for x in dict.fromkeys(labels) if x in COLOURS or x.startswith("partial_amnesiac")]
    extra = iter(EXTRA_COLOURS * 4)
    return {x: COLOURS.get(x) or next(extra) for x in sorted(wanted, key=lambda x: (x not in COLOURS, x))}


def _cells(rows: Iterable[Row]) -> list[tuple[str, str]]:
    """(dataset, model) pairs in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for row in rows:
        seen.setdefault((row["dataset"], row["model"]), None)
    return list(seen)


def _grid(n: int, *, width: float, height: float, cols: int = 3) -> tuple[Any, list[Any]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_training_curves(curves: Sequence[Row], runs: Sequence[Row], *, scenario: str, path: Path) -> Path | None:
    """Seed paper's Figures 1-2 shape: FA/RA through training, then after the unlearning request.

    One panel per dataset/model. Solid lines: accuracy on the targeted (forgotten) and the
    retained data while training; after the dashed vertical line, one marker pair per
    amnesiac variant (circle: targeted, square: retained) and RT's level for reference.
    """
    mine = [c for c in curves if c["scenario"] == scenario]
    if not mine:
        return None
    fig, axes = _grid(len(mine), width=5.6 if len(mine) > 1 else 8.0, height=4.6)
    for ax, curve in zip(axes, mine, strict=True):
        epochs = curve["epoch"]
        end = epochs[-1]
        ax.plot(epochs, [100 * v for v in curve["FA"]], color="tab:blue", label="targeted (forget set), training")
        ax.plot(epochs, [100 * v for v in curve["RA"]], color="tab:orange", label="retained, training")
        ax.axvline(end, color="grey", linestyle="--", linewidth=1)
        ax.text(end, 50, " unlearning\n request", fontsize=8, color="grey", va="center")
        key = (curve["dataset"], curve["model"], scenario)
        cell = [r for r in runs if (r["dataset"], r["model"], r["scenario"]) == key]
        for offset, (label, colour) in enumerate(amnesiac_colours(r["method"] for r in cell).items(), start=1):
            row = next((r for r in cell if r["method"] == label), None)
            if row is None:
                continue
            x = end + 0.12 * offset * max(end, 1)
            for metric, marker, last in (("FA", "o", curve["FA"][-1]), ("RA", "s", curve["RA"][-1])):
                ax.plot([end, x], [100 * last, 100 * row[metric]], color=colour, linestyle=":", linewidth=1)
                ax.plot([x], [100 * row[metric]], marker=marker, color=colour, markersize=7, linestyle="none")
            ax.plot([], [], color=colour, marker="o", linestyle=":", label=f"{label} (o targeted, s retained)")
        rt = next((r for r in cell if r["method"] == "RT"), None)
        if rt is not None:
            ax.axhline(100 * rt["FA"], color="tab:blue", linestyle="-.", linewidth=0.8, label="RT targeted accuracy")
        ax.set_title(f"{curve['dataset']} / {curve['model']} — forget {scenario}")
        ax.set_xlabel("training progress (epochs)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Accuracy on targeted vs retained data: training, then the unlearning request")
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))  # ~0.6 inch for the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_affected_batches(sweep: Sequence[Row], *, path: Path) -> Path | None:
    """Seed paper's Figure 4 shape: efficacy vs the percentage of batches the forget set touched.

    Per dataset/model: left, retained accuracy (model efficacy) after conventional vs partial
    amnesiac unlearning; right, accuracy on the forgotten samples. Dotted: before unlearning.
    """
    colours = amnesiac_colours(r["method"] for r in sweep)
    cells = _cells(r for r in sweep if r["method"] in colours)
    if not cells:
        return None
    fig, axes = plt.subplots(len(cells), 2, figsize=(11, 4.0 * len(cells)), squeeze=False)
    for (dataset, model), pair in zip(cells, axes, strict=True):
        rows = [r for r in sweep if (r["dataset"], r["model"]) == (dataset, model)]
        for ax, key, what in ((pair[0], "RA", "retained data (efficacy)"), (pair[1], "FA", "forgotten samples")):
            for method, colour in colours.items():
                pts = sorted((100 * r["affected_fraction"], 100 * r[key]) for r in rows if r["method"] == method)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", color=colour, label=method)
            before = sorted((100 * r["affected_fraction"], 100 * r[key]) for r in rows if r["method"] == "original")
            if before:
                ax.plot(*zip(*before, strict=True), linestyle=":", color="grey", label="before unlearning")
            ax.set_xscale("log")
            ax.set_title(f"{dataset} / {model}: accuracy on {what}")
            ax.set_xlabel("affected batches (% of all training steps, log scale)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("Efficacy vs percentage of affected batches (forget sets: growing subsets of one class)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{scale * float(value):.{digits}f}"


def markdown_table(runs: Sequence[Row]) -> str:
    """One table per dataset/model/scenario: every method's metrics next to RT's."""
    lines: list[str] = []
    keys = list(dict.fromkeys((r["dataset"], r["model"], r["scenario"]) for r in runs))
    header = "| method | keep ratio | FA % | RA % | TA % | MIA % | Avg.D (pp) | KL to RT (forget) | time (s) |"
    for dataset, model, scenario in keys:
        lines += [f"### {dataset} / {model} / forget {scenario}", "", header, "|" + "---|" * 9]
        for r in (r for r in runs if (r["dataset"], r["model"], r["scenario"]) == (dataset, model, scenario)):
            lines.append(
                f"| {r['method']} | {_fmt(r['keep_ratio'], digits=2)} | {_fmt(r['FA'], 100)} | {_fmt(r['RA'], 100)} "
                f"| {_fmt(r['TA'], 100)} | {_fmt(r['MIA'], 100)} | {_fmt(r['avg_gap_rt'])} "
                f"| {_fmt(r['kl_rt_forget'], digits=3)} | {_fmt(r['seconds'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_all(results: Row, out: Path) -> list[Path]:
    """Every figure and the markdown table that ``results`` supports, written into ``out``."""
    runs, curves = results.get("runs", []), results.get("curves", [])
    written = [
        plot_training_curves(curves, runs, scenario=s, path=out / f"fig_training_{s}.png")
        for s in dict.fromkeys(c["scenario"] for c in curves)
    ]
    written.append(plot_affected_batches(results.get("affected_batches", []), path=out / "fig_affected_batches.png"))
    table = out / "table.md"
    table.write_text("# Unlearning results (accuracies in %, Avg.D in percentage points)\n\n" + markdown_table(runs))
    return [p for p in written if p is not None] + [table]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Redraw the plots and table of a results.json.")
    parser.add_argument("results", type=Path, help="path of a results.json written by a runner")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: next to results.json)")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in write_all(results, args.out or args.results.parent):
        print(path)


if __name__ == "__main__":
    main()
