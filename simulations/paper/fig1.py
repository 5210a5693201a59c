"""Figure 1: accuracy on the forgotten and the retained data over the unlearning steps (MNIST).

Per model (MLP, LeNet, ResNet9): train once on fixed batches, recording the full and the
layer-wise pruned history; delete class 3 (default; ``--delete sample --affected 0.1``
deletes one sample in 10% of the batches instead); then draw, for amnesiac, partial
amnesiac, label-flip, partial label-flip, gradient ascent and partial gradient ascent, the
accuracy on the deleted and on the retained samples after each unlearning step (see
``simulations.paper.curves``), next to the model before unlearning, RT, and conventional
amnesiac followed by its fine-tuning.

    python -m simulations.paper fig1 --out results/paper/fig1 [--quick] [--federated]

Writes OUT/fig1.json (settings, seed, per model: training cost, the deletion, every curve,
the references) and OUT/fig1.png. ``--federated`` trains each model with five Flower
clients, client 1 holding and deleting the class (``simulations.paper.federated``), and
writes OUT/fig1-federated.json/.png.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedunlearn.data import DatasetBundle
from simulations.centralized_profiles import Profile
from simulations.centralized_training import compute_correction, with_delta
from simulations.paper import cli
from simulations.paper.batches import DELETION_KINDS
from simulations.paper.curves import Probe, unlearning_curve
from simulations.paper.federated import curves_compute
from simulations.paper.plotting import plot_curves
from simulations.paper.runner import run_models
from simulations.paper.settings import CURVE_LABELS, FULL_MNIST, QUICK_MNIST, REFERENCE_LABELS, PaperSetup, row
from simulations.paper.training import delete, train_model

LABELS = CURVE_LABELS + REFERENCE_LABELS


def compute_model(
    setup: PaperSetup, profile: Profile, bundle: DatasetBundle, name: str, *, workdir: Path
) -> dict[str, Any]:
    """One model's curves and references (the cell of Figures 1 and 2)."""
    trained = train_model(setup, profile, bundle, name, workdir=workdir)
    placement, split = delete(trained, setup)
    probe = Probe.build(split, trained.cell.test, cap=setup.eval_samples, seed=setup.seed)
    model = trained.cell.model
    references, seconds = {}, {}
    for label in (x for x in REFERENCE_LABELS if profile.method(x) is not None):
        start = time.perf_counter()
        correction = compute_correction(
            trained.cell, row(profile, label), profile, split, scenario="paper", seed=setup.seed
        )
        seconds[label] = time.perf_counter() - start
        references[label] = probe.measure(with_delta(model, correction.delta))
    curves = {
        label: unlearning_curve(
            trained, row(profile, label), profile, split, probe, points=setup.curve_points, seed=setup.seed
        ).to_dict()
        for label in CURVE_LABELS
        if profile.method(label) is not None
    }
    return {
        "model": name,
        "train_seconds": trained.seconds,
        "recorded_steps": trained.steps,
        "deletion": {
            "kind": setup.delete,
            "forget_class": setup.forget_class,
            "size": len(placement.ids),
            "affected_fraction": placement.affected_fraction,
        },
        "original": probe.measure(model),
        "references": references,
        "reference_seconds": seconds,
        "curves": curves,
    }


def add_deletion_args(parser: Any) -> None:
    """``--delete`` and ``--affected``: which samples are deleted, and from how many batches."""
    parser.add_argument(
        "--delete", choices=DELETION_KINDS, default="class", help="class samples or 1 per batch (class)"
    )
    parser.add_argument("--affected", type=float, default=1.0, help="fraction of batches holding a deleted sample (1)")


def check_federated(args: Any) -> None:
    """A federated run deletes a whole class held by one client: refuse other deletions up front."""
    if args.federated and (args.delete != "class" or args.affected != 1.0):
        raise SystemExit("--federated deletes the class its client holds; it takes no --delete or --affected")


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn paper fig1``."""
    parser = cli.parser(__doc__ or "")
    add_deletion_args(parser)
    cli.add_federated(parser)
    args = parser.parse_args(cli.argv_list(argv))
    cli.start(args)
    check_federated(args)
    setup = cli.setup_from(args, quick=QUICK_MNIST, full=FULL_MNIST, delete=args.delete, affected=args.affected)
    data = run_models(
        cli.figure_name("fig1", args),
        setup,
        labels=LABELS,
        compute=curves_compute(args.data_root) if args.federated else compute_model,
        draw=plot_curves,
        out=args.out,
        data_root=args.data_root,
        fresh=args.fresh,
    )
    name = cli.figure_name("fig1", args)
    print(f"{name}: {len(data['cells'])} model(s) in {data['wall_seconds']:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
