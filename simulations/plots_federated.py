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
    """FA / RA / TA / MIA (and backdoor ASR) before unlearning, after it, and for RT."""
    metrics = report["metrics"]
    keys = ["FA", "RA", "TA", "MIA"] + (["backdoor_asr"] if metrics["RT"].get("backdoor_asr") is not None else [])
    names = [n for n in ("before", "unlearned", "RT") if n in metrics]
    fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 3, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [100 * (metrics[name].get(k) or 0.0) for k in keys]
        bars = ax.bar([x + i * width for x in range(len(keys))], values, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(keys))], [k.replace("_", " ") for k in keys])
    ax.set_ylabel("%")
    ax.set_title(
        f"{report['method']}: Avg.D to RT {metrics['avg_gap_rt']:.2f} points "
        f"({report['unlearning']['seconds']:.1f} s vs RT {report['retrain']['seconds']:.1f} s)"
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
