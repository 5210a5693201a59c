"""The sweep's PNG and markdown table, drawn from sweep.json alone.

Panels: (a) partial amnesiac against its keep ratio rho (1 = conventional amnesiac);
(b) both methods against the share of batches holding a deleted sample, for class samples
(solid) and single random samples (dashed); (c, d) retained and forgotten accuracy for the
categorical variants (selection rule, layers, training lr and epochs, batch composition);
(e) retained accuracy after deleting single samples from few batches, per training
variant; (f) the same when only the last epoch's stored steps are undone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from simulations.paper.plotting import percent  # noqa: E402

Row = dict[str, Any]
CATEGORICAL = ("selection", "layers", "lr", "epochs", "batches")
SAMPLE_AXES = ("lr_samples", "epochs_samples", "batches_samples")
METHOD_COLOURS = {"amnesiac": "tab:red", "partial_amnesiac": "tab:green"}


def rows_of(data: dict[str, Any], model: str) -> list[Row]:
    """Every row of ``model``, over all its trainings."""
    return [r for c in data["cells"].values() if c["model"] == model for r in c["rows"]]


def _keep_panel(ax: Any, rows: list[Row]) -> None:
    mine = sorted((float(r["variant"]), r) for r in rows if r["axis"] == "keep_ratio")
    for key, colour in (("RA", "tab:orange"), ("FA", "tab:blue")):
        ax.plot([x for x, _ in mine], [100 * r[key] for _, r in mine], marker="o", color=colour, label=key)
        ax.axhline(100 * mine[0][1]["original"][key], color=colour, linestyle=":", label=f"{key} before unlearning")
    ax.set_xscale("log")
    ax.set_xlabel("keep ratio rho of the stored updates (1 = conventional amnesiac)")
    ax.set_title("(a) whole class deleted (every batch affected)")


def _placement_panel(ax: Any, rows: list[Row]) -> None:
    for kind, dash in (("class", "-"), ("sample", "--")):
        for label in ("amnesiac", "partial_amnesiac"):
            mine = sorted(
                (100 * r["affected_fraction"], 100 * r["RA"])
                for r in rows
                if r["axis"] == f"deletion_{kind}" and r["method"] == label
            )
            if mine:
                what = "class samples" if kind == "class" else "1 sample/batch"
                ax.plot(
                    *zip(*mine, strict=True),
                    marker="o",
                    color=METHOD_COLOURS[label],
                    linestyle=dash,
                    label=f"{label}, {what}",
                )
    ax.set_xscale("log")
    ax.set_xlabel("batches holding a deleted sample (%)")
    ax.set_title("(b) RA against the share of affected batches")


def _distinct(rows: Iterable[Row]) -> list[Row]:
    """Rows without repeats of the same result (the base setting appears under several axes)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        key = (r["method"], r["forget_size"], r["FA"], r["RA"], r["TA"], r["keep_ratio"], r["original"]["RA"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _bar_panel(ax: Any, rows: list[Row], key: str, title: str, axes: tuple[str, ...] = CATEGORICAL) -> None:
    picked = _distinct(r for r in rows if r["axis"] in axes)
    names = [f"{r['axis'].removesuffix('_samples')}: {r['variant']}" for r in picked]
    ax.bar(range(len(picked)), [100 * r[key] for r in picked], color=[METHOD_COLOURS[r["method"]] for r in picked])
    for method, colour in METHOD_COLOURS.items():
        ax.bar([0], [0], color=colour, label=method)
    before = [100 * r["original"][key] for r in picked]
    ax.plot(
        range(len(picked)),
        before,
        linestyle="none",
        marker="_",
        markersize=14,
        color="black",
        label="before unlearning",
    )
    ax.set_xticks(range(len(picked)), names, rotation=70, fontsize=7)
    ax.set_title(title)


def draw(data: dict[str, Any], out: Path) -> Path | None:
    """Write ``sweep.png`` (first model) and ``sweep.md`` (every model)."""
    models = list(dict.fromkeys(c["model"] for c in data["cells"].values()))
    (out / "sweep.md").write_text(markdown(data))
    if not models:
        return None
    rows = rows_of(data, models[0])
    fig, axes = plt.subplots(3, 2, figsize=(15, 16))
    _keep_panel(axes[0][0], rows)
    _placement_panel(axes[0][1], rows)
    _bar_panel(axes[1][0], rows, "RA", "(c) RA after unlearning the whole class (red: amnesiac, green: partial)")
    _bar_panel(axes[1][1], rows, "FA", "(d) FA after unlearning the whole class")
    _bar_panel(axes[2][0], rows, "RA", "(e) RA after deleting single samples in 1% / 5% of batches", SAMPLE_AXES)
    _bar_panel(axes[2][1], rows, "RA", "(f) RA when only the last epoch's steps are undone", ("late_epoch",))
    for ax in axes.ravel():
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"Why partial amnesiac loses retained accuracy — {data['settings']['dataset']} / {models[0]}")
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(data: dict[str, Any]) -> str:
    """One table per model and axis (accuracies in %, drops in percentage points)."""
    lines = ["# Partial amnesiac sweep (no fine-tuning)", ""]
    header = "| variant | method | rho | affected % | deleted | FA | RA | TA | RA drop (pp) | norm C / training |"
    for model in dict.fromkeys(c["model"] for c in data["cells"].values()):
        rows = rows_of(data, model)
        for axis in dict.fromkeys(r["axis"] for r in rows):
            lines += [f"## {model}: {axis}", "", header, "|" + "---|" * 10]
            for r in (r for r in rows if r["axis"] == axis):
                drop = 100 * (r["original"]["RA"] - r["RA"])
                lines.append(
                    f"| {r['variant']} | {r['method']} | {r['keep_ratio']:g} | {percent(r['affected_fraction'])} "
                    f"| {r['forget_size']} | {percent(r['FA'])} | {percent(r['RA'])} | {percent(r['TA'])} "
                    f"| {drop:.1f} | {r['correction_ratio']:.2f} |"
                )
            lines.append("")
    return "\n".join(lines)
