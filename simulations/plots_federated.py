"""Plots of federated runs (matplotlib, Agg backend): training curves and storage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training(results: Mapping[str, Any], path: str | Path) -> Path:
    """Test accuracy and mean train loss per round, plus history bytes per client per round."""
    rounds = results["rounds"]
    xs = [r["round"] for r in rounds]
    fig, (ax_acc, ax_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    ax_acc.plot(xs, [100 * (r["test_accuracy"] or 0) for r in rounds], "o-", label="test accuracy (server)")
    if any(r["client_eval_accuracy"] is not None for r in rounds):
        ax_acc.plot(
            xs, [100 * (r["client_eval_accuracy"] or 0) for r in rounds], "s--", label="retained accuracy (clients)"
        )
    ax_acc.set(xlabel="round", ylabel="accuracy (%)", title="Global model")
    ax_acc.grid(alpha=0.3)
    ax_loss = ax_acc.twinx()
    ax_loss.plot(xs, [r["train_loss"] for r in rounds], "^:", color="tab:red", label="train loss")
    ax_loss.set_ylabel("mean local train loss")
    lines = ax_acc.get_legend_handles_labels()[0] + ax_loss.get_legend_handles_labels()[0]
    ax_acc.legend(lines, [str(line.get_label()) for line in lines], loc="center right")
    for pid in sorted({c["partition_id"] for r in rounds for c in r["clients"]}):
        ys = [
            next((c["history_round_bytes"] / 1e6 for c in r["clients"] if c["partition_id"] == pid), float("nan"))
            for r in rounds
        ]
        ax_bytes.plot(xs, ys, "o-", label=f"client {pid}")
    ax_bytes.set(xlabel="round", ylabel="history written (MB)", title="Update history per client per round")
    ax_bytes.grid(alpha=0.3)
    ax_bytes.legend(fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_comparison(report: Mapping[str, Any], path: str | Path) -> Path:
    """Each label next to ``none``, ``finetune`` and RT: the metrics (left) and the forget
    metric's gap to RT with the gain over doing nothing (right)."""
    rows, metric = report["rows"], report["forget_metric"]
    labels = list(rows)
    keys = [metric] + [k for k in ("FA", "RA", "TA", "MIA") if k != metric]
    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(max(10, 1.2 * len(keys) * len(labels) / 2 + 4), 4.5))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        values = [100 * (rows[label].get(k) or 0.0) for k in keys]
        bars = ax.bar([x + i * width for x in range(len(keys))], values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(keys))], keys)
    ax.set(ylabel="%", title=f"metrics ({'discriminating' if report['discriminating'] else 'NOT discriminating'})")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    gaps = [rows[label]["forget_gap_rt"] for label in labels]
    bars = ax_gap.bar(labels, gaps, color=["tab:grey" if lab in ("none", "RT") else "tab:blue" for lab in labels])
    ax_gap.bar_label(bars, fmt="%.2f", fontsize=7)
    ax_gap.set(ylabel="points", title=f"{metric}: gap to RT (lower is better)")
    ax_gap.tick_params(axis="x", rotation=30)
    ax_gap.grid(axis="y", alpha=0.3)
    fig.suptitle(f"deletion schedule {report['schedule']!r}")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
