"""Figure 4: unlearning efficacy against the percentage of affected batches.

Per model: train once on fixed class-stratified batches (``simulations.paper.batches``),
then for p in 1, 5, 10, 25, 50, 100% delete samples placed so that exactly p% of the
batches (hence of the recorded steps) held one: every forget-class sample of the chosen
batches (``--delete class``, default; 100% is the whole class) or one random sample per
chosen batch (``--delete sample``). For each p: accuracy on the retained data (the model's
efficacy) and on the deleted samples after conventional and partial amnesiac unlearning
(no fine-tuning), next to the model before unlearning and RT (``--no-rt`` skips RT).
The share of affected steps is also measured from the recorded history.

    python -m simulations.paper fig4 --out results/paper/fig4 [--quick] [--delete sample] [--federated]

Writes OUT/fig4.json (one cell per model and p) and OUT/fig4.png. Exact percentages need a
batch count divisible by 100: the full run uses 57,600 MNIST images (900 batches of 64).
``--federated``: the same figure from a Flower federation (``simulations.paper.fig4_federated``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedunlearn.data import DatasetBundle
from simulations.centralized_profiles import Profile
from simulations.centralized_training import check_methods, compute_correction, with_delta
from simulations.paper import cli
from simulations.paper.batches import DELETION_KINDS
from simulations.paper.curves import Probe
from simulations.paper.fig4_federated import main_federated
from simulations.paper.plotting import plot_affected
from simulations.paper.results import FigureResults
from simulations.paper.settings import FULL_MNIST, QUICK_MNIST, PaperSetup, row
from simulations.paper.training import Trained, delete, train_model

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
METHODS = ("amnesiac", "partial_amnesiac")
QUICK = QUICK_MNIST.replace(models=("lenet",))
FULL = FULL_MNIST.replace(models=("mlp", "lenet"))


def compute_point(
    trained: Trained, setup: PaperSetup, profile: Profile, fraction: float, *, rt: bool
) -> dict[str, Any]:
    """One model at one affected fraction: the methods' FA/RA/TA, the original's, RT's."""
    placement, split = delete(trained, setup, fraction=fraction)
    probe = Probe.build(split, trained.cell.test, cap=setup.eval_samples, seed=setup.seed)
    model = trained.cell.model
    labels = METHODS + (("RT",) if rt else ())
    measured = {}
    for label in labels:
        correction = compute_correction(
            trained.cell, row(profile, label), profile, split, scenario="paper", seed=setup.seed
        )
        measured[label] = probe.measure(with_delta(model, correction.delta))
    affected = len(trained.cell.histories[1.0].affected_steps(placement.ids))
    return {
        "model": trained.cell.model_name,
        "target_fraction": fraction,
        "affected_fraction": placement.affected_fraction,
        "measured_affected_fraction": affected / trained.steps,
        "forget_size": len(placement.ids),
        "original": probe.measure(model),
        "methods": {label: measured[label] for label in METHODS},
        **({"RT": measured["RT"]} if rt else {}),
    }


def run(setup: PaperSetup, *, out: Path, data_root: str | None, fresh: bool, rt: bool) -> dict[str, Any]:
    """Every (model, fraction) cell not finished yet; redraw after each model."""
    labels = METHODS + (("RT",) if rt else ())
    check_methods(m.method for m in setup.profile(labels).methods)
    bundle, setup, facts = cli.load_data(setup, data_root=data_root)
    profile = setup.profile(labels)
    settings = {**setup.to_dict(), "fractions": FRACTIONS, "rt": rt}
    results = FigureResults(out, "fig4", settings=settings, fresh=fresh)
    results.note(**facts)
    for i, name in enumerate(tqdm(setup.models, desc="fig4")):
        missing = [f for f in FRACTIONS if not results.done(f"{name}/{f:g}")]
        if missing:
            _model(setup, profile, bundle, name, missing, results, rt=rt)
        if i < len(setup.models) - 1:
            plot_affected(results.data, out / "fig4.png")  # progress; the last model is drawn below
    data = results.finish()
    plot_affected(data, out / "fig4.png")
    return data


def _model(
    setup: PaperSetup,
    profile: Profile,
    bundle: DatasetBundle,
    name: str,
    fractions: list[float],
    results: FigureResults,
    *,
    rt: bool,
) -> None:
    with tempfile.TemporaryDirectory(prefix="fedunlearn-fig4-") as tmp:
        trained = train_model(setup, profile, bundle, name, workdir=Path(tmp))
        for fraction in tqdm(fractions, desc=f"fig4 {name}", leave=False):
            results.put(f"{name}/{fraction:g}", compute_point(trained, setup, profile, fraction, rt=rt))


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn paper fig4``."""
    parser = cli.parser(__doc__ or "")
    parser.add_argument("--delete", choices=DELETION_KINDS, default="class", help="what each affected batch loses")
    parser.add_argument("--no-rt", action="store_true", help="skip retraining (RT) at every point")
    cli.add_federated(parser)
    args = parser.parse_args(cli.argv_list(argv))
    cli.start(args)
    setup = cli.setup_from(args, quick=QUICK, full=FULL, delete=args.delete)
    if args.federated:
        return main_federated(setup, FRACTIONS, args)
    data = run(setup, out=args.out, data_root=args.data_root, fresh=args.fresh, rt=not args.no_rt)
    print(f"fig4: {len(data['cells'])} point(s) in {data['wall_seconds']:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
