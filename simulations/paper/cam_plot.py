"""The Grad-CAM grid of Figure 3, drawn from fig3.json alone.

Rows: test images (the forgotten class first, then the retained control class); columns:
the image, then the original model, RT and each unlearning method. Each tile overlays the
map of the image's true class on the image; tiles of a row share one colour scale (the
row's largest value), so a fading map means the model finds less evidence for the class.
Tile titles: predicted label and its probability.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _tile(ax: Any, image: np.ndarray, cam: np.ndarray | None, vmax: float, title: str, colour: str) -> None:
    ax.imshow(image, cmap="gray")
    if cam is not None:
        ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax)
    ax.set_title(title, fontsize=8, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])


def _scale(variants: dict[str, Any], names: list[str], row: int) -> float:
    """The colour scale of a row: the original model's largest value (or the row's, without one).

    Tying the scale to the model before unlearning shows weaker evidence as a fainter map;
    a broken model's far larger maps (gradient ascent can blow activations up) saturate
    instead of washing out every other tile.
    """
    reference = [n for n in names if n == "original"] or names
    return max(float(np.max(variants[n]["maps"][row])) for n in reference) or 1.0


def _draw_cell(fig: Any, cell: dict[str, Any]) -> None:
    variants = cell["variants"]
    names = list(variants)
    images = np.asarray(cell["images"]["pixels"])
    labels = cell["images"]["labels"]
    grid = fig.subplots(len(images), len(names) + 1, squeeze=False)
    for r, image in enumerate(images):
        vmax = _scale(variants, names, r)
        _tile(grid[r][0], image, None, vmax, f"class {labels[r]}", "black")
        for c, name in enumerate(names, start=1):
            pred, conf = variants[name]["predicted"][r], variants[name]["confidence"][r]
            colour = "tab:green" if pred == labels[r] else "tab:red"
            _tile(grid[r][c], image, np.asarray(variants[name]["maps"][r]), vmax, f"pred {pred} ({conf:.2f})", colour)
    for c, name in enumerate(names, start=1):
        grid[0][c].set_title(f"{name.replace('_', ' ')}\n{grid[0][c].get_title()}", fontsize=8)


def plot_cams(data: dict[str, Any], path: Path) -> Path | None:
    """The first model's grid at ``path``; any further model's at ``<stem>_<model>.png`` beside it."""
    written = [
        _plot_cell(data, cell, path if i == 0 else path.with_name(f"{path.stem}_{cell['model']}.png"))
        for i, cell in enumerate(data["cells"].values())
    ]
    return written[0] if written else None


def _plot_cell(data: dict[str, Any], cell: dict[str, Any], path: Path) -> Path:
    rows, cols = len(cell["images"]["labels"]), len(cell["variants"]) + 1
    fig = plt.figure(figsize=(1.45 * cols, 1.6 * rows + 0.8))
    _draw_cell(fig, cell)
    forgotten, kept = cell["deletion"]["forget_class"], cell["retained_class"]
    fed = cell.get("federation")
    where = f" (Flower, {fed['clients']} clients; client {fed['forgetting_client']} deletes)" if fed else ""
    lines = [
        f"{data['figure'].upper()} — {data['settings']['dataset']} / {cell['model']}{where}: Grad-CAM of the true "
        f"class, class {forgotten} forgotten, class {kept} retained (green title: correct prediction)"
    ]
    if cell.get("failed"):
        lines.append(f"not shown, the method failed: {', '.join(cell['failed'])}")
    # about 14 characters of a 9-point title per inch of figure width
    fig.suptitle("\n".join(textwrap.fill(line, width=int(14 * 1.45 * cols)) for line in lines), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
