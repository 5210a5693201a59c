"""Figure 2: Figure 1's curves on OrganAMNIST with ConvNet, AlexNet and ResNet9.

The same cell as Figure 1 (``fig1.compute_model``) on the MedMNIST organ set (11 classes;
forget class 3 by default). OrganAMNIST is read from ``<data root>/organamnist.npz`` by the
official ``medmnist`` class. When that file is missing and ``--dataset`` was not given, the
command says so and runs the same figure on MNIST, recording the fallback in the JSON and
the PNG title; ``--dataset mnist`` asks for MNIST outright.

    python -m simulations.paper fig2 --out results/paper/fig2 [--quick] [--dataset mnist] [--federated]

Writes OUT/fig2.json and OUT/fig2.png (``--federated``: OUT/fig2-federated.json/.png, see
``simulations.paper.federated``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from simulations.paper import cli
from simulations.paper.federated import curves_compute
from simulations.paper.fig1 import LABELS, add_deletion_args, check_federated, compute_model
from simulations.paper.plotting import plot_curves
from simulations.paper.runner import run_models
from simulations.paper.settings import FULL_ORGAN, QUICK_ORGAN

DEFAULT_DATASET = "organamnist"
FALLBACK_DATASET = "mnist"


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn paper fig2``."""
    parser = cli.parser(__doc__ or "")
    parser.add_argument("--dataset", default=None, help=f"dataset ({DEFAULT_DATASET}; falls back to mnist if missing)")
    add_deletion_args(parser)
    cli.add_federated(parser)
    args = parser.parse_args(cli.argv_list(argv))
    cli.start(args)
    check_federated(args)
    setup = cli.setup_from(
        args,
        quick=QUICK_ORGAN,
        full=FULL_ORGAN,
        dataset=args.dataset or DEFAULT_DATASET,
        delete=args.delete,
        affected=args.affected,
    )
    fallback = FALLBACK_DATASET if args.dataset is None else None
    data = run_models(
        cli.figure_name("fig2", args),
        setup,
        labels=LABELS,
        compute=curves_compute(args.data_root) if args.federated else compute_model,
        draw=plot_curves,
        out=args.out,
        data_root=args.data_root,
        fresh=args.fresh,
        fallback=fallback,
    )
    used = data["data"]["used"]
    print(f"fig2 on {used}: {len(data['cells'])} model(s) in {data['wall_seconds']:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
