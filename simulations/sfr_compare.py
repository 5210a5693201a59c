"""Federated SFR-on next to centralized SFR-on on the same deletion, from a finished comparison.

``fedunlearn sfr-compare RUN_DIR [RUN_DIR ...] --out DIR``: ``RUN_DIR`` is one
cell-seed of ``fedunlearn bench`` (a ``<cell>-s<seed>`` folder in its output's ``work``
folder) or of ``fedunlearn simulate`` with a schedule. For every SFR-on label it ran
(``sfr_on``, ``sfr_on@<variant>``) this scores, with the judge's definitions: the model
before the deletion, the federated phase's model, SFR-on run centrally from the same
weights on the pooled data (D_f = every deleted record, D_r = all retained records, the
same settings and the same iteration budget), and RT. The gap between the federated and
the centralized rows is what federating SFR-on costs.
Writes ``sfr_compare.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.common.config import unflatten_dict

from fedunlearn.atomic import write_json_atomic
from fedunlearn.config import FederationConfig
from fedunlearn.run_config import config_from_sections
from fedunlearn.unlearning import ForgetRetainSplit, UnlearnContext, get_method, method_settings
from fedunlearn.unlearning.sfr_on import adaptive_weights
from simulations.comparison import RT, TRUNK
from simulations.judge import GroundTruth, ground_truth, load_model, score

#: The figures shown side by side (fractions; MIA is an AUC).
SHOWN = ("FA", "RA", "TA", "MIA", "ASR")


def labels_in(run_dir: Path) -> list[str]:
    """The SFR-on labels of a comparison folder (``sfr_on-at-uniform`` -> ``sfr_on@uniform``)."""
    runs = run_dir / "runs"
    found = [p.name.replace("-at-", "@") for p in sorted(runs.iterdir()) if p.name.split("-at-")[0] == "sfr_on"]
    return [label for label in found if (runs / label.replace("@", "-at-") / "model.pt").exists()]


def run_config(run_dir: Path, label: str) -> FederationConfig:
    """The config the label's phase ran with (its results.json records it)."""
    results = json.loads((run_dir / "runs" / label.replace("@", "-at-") / "results.json").read_text())
    return config_from_sections(unflatten_dict(results["config"]))


def phase_of(run_dir: Path, label: str) -> dict[str, Any]:
    """How the label's federated phase ended (status, outer steps, client steps)."""
    results = json.loads((run_dir / "runs" / label.replace("@", "-at-") / "results.json").read_text())
    phases = [e for e in results["events"] if e.get("type") == "unlearning"]
    return {
        "statuses": [p["status"] for p in phases],
        "outer_steps": [p.get("metrics", {}).get("outer_steps") for p in phases],
        "client_steps": sum(p.get("metrics", {}).get("client_steps", 0) for p in phases),
    }


def centralized(config: FederationConfig, truth: GroundTruth, start: Path) -> tuple[torch.nn.Module, float]:
    """SFR-on on the pooled data from the weights at ``start``: the way its authors run it."""
    model = load_model(config, start)
    settings = method_settings(config.unlearn, "sfr_on")
    split = ForgetRetainSplit(forget=truth.forget, retain=truth.retain)
    torch.manual_seed(config.seed)
    began = time.monotonic()
    correction = get_method("sfr_on")(model, split=split, settings=settings, context=UnlearnContext(seed=config.seed))
    state = model.state_dict()
    model.load_state_dict({k: v + correction.delta[k] if k in correction.delta else v for k, v in state.items()})
    return model, time.monotonic() - began


def adaptive_focus(model: torch.nn.Module, truth: GroundTruth, temperature: float) -> dict[str, float]:
    """Where SFR-on's adaptive weights ``w_i ~ l_i^-lambda`` put the ascent at the start: the
    effective number of deleted records they weigh (1 / sum w_i^2), the weighted loss the
    ascent climbs, and the plain mean loss for comparison."""
    model.eval()
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(truth.forget.inputs), truth.forget.labels, reduction="none")
    weights = adaptive_weights(losses, temperature)
    return {
        "effective_records": float(1.0 / (weights**2).sum()),
        "weighted_loss": float((weights * losses).sum()),
        "mean_loss": float(losses.mean()),
        "records": float(len(losses)),
    }


def compare_run(run_dir: Path) -> list[dict[str, Any]]:
    """One row per SFR-on label of ``run_dir`` and model (before, federated, centralized, RT)."""
    rows: list[dict[str, Any]] = []
    for label in labels_in(run_dir):
        config = run_config(run_dir, label)
        truth = ground_truth(config, state_root=run_dir / "runs" / TRUNK / "state")
        rt = load_model(config, run_dir / "runs" / RT / "model.pt")
        central, seconds = centralized(config, truth, run_dir / "runs" / TRUNK / "model.pt")
        models = {
            "before": load_model(config, run_dir / "runs" / TRUNK / "model.pt"),
            "federated": load_model(config, run_dir / "runs" / label.replace("@", "-at-") / "model.pt"),
            "centralized": central,
            "RT": rt,
        }
        for name, model in models.items():
            figures = score(model, truth, reference=rt, seed=config.seed)
            rows.append(
                {
                    "run": run_dir.name,
                    "label": label,
                    "model": name,
                    **{k: figures.get(k) for k in SHOWN},
                    **({"phase": phase_of(run_dir, label)} if name == "federated" else {}),
                    **({"seconds": seconds} if name == "centralized" else {}),
                }
            )
            if name == "before":
                temperature = method_settings(config.unlearn, "sfr_on").temperature
                rows[-1]["adaptive"] = adaptive_focus(model, truth, temperature)
            print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict[str, Any]) -> str:
    shown = "  ".join(f"{k} {100 * row[k]:5.1f}" for k in SHOWN if isinstance(row.get(k), float))
    extra = f"  phase {row['phase']['statuses']}" if "phase" in row else ""
    if "adaptive" in row:
        focus = row["adaptive"]
        extra += (
            f"  adaptive weights on {focus['effective_records']:.1f} of {focus['records']:.0f} records, "
            f"weighted loss {focus['weighted_loss']:.2e} (mean {focus['mean_loss']:.2e})"
        )
    return f"{row['run']:32s} {row['label']:16s} {row['model']:12s} {shown}{extra}"


def main(argv: Sequence[str] | None = None) -> int:
    """Score every given comparison folder; write sfr_compare.json to ``--out``."""
    parser = argparse.ArgumentParser(prog="fedunlearn sfr-compare", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="comparison folders (a bench output's work/<cell>-s<seed>)")
    parser.add_argument("--out", type=Path, required=True, help="folder for sfr_compare.json")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "runs" / TRUNK / "model.pt").exists()]
    if missing:
        print(f"sfr_compare: no finished comparison (runs/trunk/model.pt) in {missing}", file=sys.stderr)
        return 2
    rows = [row for run in args.runs for row in compare_run(run)]
    path = write_json_atomic(args.out / "sfr_compare.json", {"rows": rows})
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
