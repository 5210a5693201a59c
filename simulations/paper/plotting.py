"""The PNGs of Figures 1, 2 and 4, drawn from their JSON files alone.

Colours name the method family (amnesiac red, label-flip blue, gradient ascent green);
line style names the version (naive dashed, layer-wise partial solid); a cross ends a
curve whose loss became NaN before its budget was spent. Grey dotted: the
model before unlearning; black dash-dot: RT, retrained without the deleted data.
Accuracies are fractions in the JSON and percentages in the plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAMILY_COLOURS = {"amnesiac": "tab:red", "label_flip": "tab:blue", "gradient_ascent": "tab:green"}
PANELS = (("FA", "forgotten data"), ("RA", "retained data"))


def style(label: str) -> dict[str, Any]:
    """Colour by family, solid for the partial version, dashed for the naive one."""
    family = label.removeprefix("partial_")
    return {
        "color": FAMILY_COLOURS.get(family, "tab:grey"),
        "linestyle": "-" if label.startswith("partial_") else "--",
        "linewidth": 2.0 if label.startswith("partial_") else 1.5,
    }


def _deletion_text(cell: dict[str, Any]) -> str:
    d = cell["deletion"]
    what = f"class {d['forget_class']}" if d["kind"] == "class" else "1 sample per batch"
    fed = cell.get("federation")
    if fed is not None:  # a Flower federation: one client holds and deletes the class
        return f"{d['size']} samples ({what}) held and deleted by client {fed['forgetting_client']} of {fed['clients']}"
    return f"{d['size']} samples ({what}) in {100 * d['affected_fraction']:.0f}% of batches"


def _draw_curve_panel(ax: Any, cell: dict[str, Any], key: str, what: str) -> None:
    for label, curve in cell["curves"].items():
        total = max(curve["budget"], 1)
        xs = [100 * s / total for s in curve["steps"]]
        ys = [100 * v for v in curve[key]]
        ax.plot(xs, ys, marker=".", label=f"{label} ({total} {curve['unit']})", **style(label))
        if curve["diverged_at"] is not None:  # the loss became NaN: the curve stops here
            ax.plot(xs[-1:], ys[-1:], marker="x", markersize=10, color=style(label)["color"], linestyle="none")
    ax.axhline(100 * cell["original"][key], color="grey", linestyle=":", label="before unlearning")
    references = cell.get("references", {})
    if "RT" in references:
        ax.axhline(100 * references["RT"][key], color="black", linestyle="-.", linewidth=1, label="RT (retrained)")
    if "amnesiac+ft" in references:
        ax.plot(
            [100],
            [100 * references["amnesiac+ft"][key]],
            marker="*",
            markersize=13,
            color="tab:purple",
            linestyle="none",
            label="amnesiac + fine-tuning",
        )
    ax.set_title(f"{cell['model']}: accuracy on {what}")
    ax.set_xlabel("unlearning progress (% of the method's steps)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)


def plot_curves(data: dict[str, Any], path: Path) -> Path | None:
    """Figures 1-2: per model, FA and RA over the unlearning steps of every method."""
    cells = list(data["cells"].values())
    if not cells:
        return None
    fig, axes = plt.subplots(len(cells), 2, figsize=(13, 4.3 * len(cells)), squeeze=False)
    for cell, pair in zip(cells, axes, strict=True):
        for ax, (key, what) in zip(pair, PANELS, strict=True):
            _draw_curve_panel(ax, cell, key, what)
    used = data["data"].get("used", data["settings"]["dataset"])
    note = (
        f" (requested {data['data']['requested']}: missing, run on {used})" if "fallback_reason" in data["data"] else ""
    )
    fig.suptitle(f"{data['figure'].upper()} — {used}{note}: unlearning {_deletion_text(cells[0])}")
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / fig.get_figheight(), 1, 1))  # ~0.9 inch for the legend
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_affected(data: dict[str, Any], path: Path) -> Path | None:
    """Figure 4: per model, RA (efficacy) and FA after unlearning against % affected batches."""
    models = list(dict.fromkeys(c["model"] for c in data["cells"].values()))
    if not models:
        return None
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    for model, pair in zip(models, axes, strict=True):
        rows = sorted((c for c in data["cells"].values() if c["model"] == model), key=lambda c: c["affected_fraction"])
        xs = [100 * c["affected_fraction"] for c in rows]
        for ax, (key, what) in zip(
            pair, (("RA", "retained data (model efficacy)"), ("FA", "deleted samples")), strict=True
        ):
            for label in rows[0]["methods"]:
                ax.plot(xs, [100 * c["methods"][label][key] for c in rows], marker="o", label=label, **style(label))
            ax.plot(
                xs, [100 * c["original"][key] for c in rows], color="grey", linestyle=":", label="before unlearning"
            )
            if all("RT" in c for c in rows):
                ax.plot(xs, [100 * c["RT"][key] for c in rows], color="black", linestyle="-.", label="RT (retrained)")
            else:  # the federated figure retrains only for the whole class
                rt = [(x, 100 * c["RT"][key]) for x, c in zip(xs, rows, strict=True) if "RT" in c]
                if rt:
                    ax.plot(*zip(*rt, strict=True), "k*", markersize=11, label="RT (retrained)")
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
            ax.set_title(f"{model}: accuracy on {what}")
            ax.set_xlabel("batches holding a deleted sample (% of all recorded steps)")
            ax.set_ylabel("accuracy (%)")
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3, which="both")
        pair[0].legend(fontsize=8, loc="lower left")
    kind = data["settings"]["delete"]
    what = f"class {data['settings']['forget_class']} samples" if kind == "class" else "one random sample"
    federated = data["figure"].endswith("federated")
    where = "\n5 Flower clients, client 1 deleting; the share of its recorded steps is measured" if federated else ""
    fig.suptitle(
        f"{data['figure'].upper()} — {data['settings']['dataset']}: efficacy vs affected batches "
        f"(deleting {what} per affected batch){where}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def percent(value: float | None) -> str:
    """``0.123`` -> ``12.3`` (``–`` for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}"
