"""Why partial amnesiac loses retained accuracy when a class is deleted: a sweep of the causes.

The centralized check reported, for LeNet forgetting a class with rho = 0.1, FA 99.3% and
RA 17.2%: no forgetting, and the model broken. This command varies one suspected cause at a
time around a base setting (LeNet, MNIST 19,200 images = 300 fixed stratified batches of 64,
3 epochs of SGD at lr 0.05, forget class 3, rho = 0.1) and records FA, RA, TA after
conventional amnesiac (rho = 1) and partial amnesiac, without fine-tuning:

- ``keep_ratio``: rho in 0.001 .. 0.3 (one training records every history);
- ``selection``: the random selector instead of top-k magnitude; one record per epoch (the
  epoch's net change, pruned) instead of one per step;
- ``layers``: the partial correction applied to the convolutional layers only, the linear
  layers only, or the last layer only;
- ``deletion``: class samples or single random samples, placed in exactly 1 .. 100% of the
  batches (``batches.place_deletion``);
- ``lr``: the training learning rate (0.01, 0.1; each a new training), for the whole class
  and (``lr_samples``) for single samples in 1% and 5% of the batches;
- ``epochs``: a longer training (8 epochs), likewise (``epochs_samples``);
- ``late_epoch``: histories that hold the last epoch only, as if the deleted samples had
  joined the training in its last epoch (amnesiac then undoes late, small steps only);
- ``batches``: class-sorted batches (nearly one class per batch), where deleting a class
  touches only its own batches (a new training).

Every row also has ``correction_ratio``: the norm of the correction over the norm of the
whole training displacement ``theta_T - theta_0``.

    python -m simulations.paper sweep --out results/paper/sweep [--quick] [--models lenet mlp]

Writes OUT/sweep.json, OUT/sweep.md and OUT/sweep.png (drawn by ``sweep_plot``).
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fedunlearn.data import DatasetBundle
from fedunlearn.history import HistoryStore
from fedunlearn.unlearning.base import ForgetRetainSplit
from simulations.centralized_profiles import Profile
from simulations.centralized_training import check_methods, compute_correction, with_delta
from simulations.paper import cli
from simulations.paper.batches import Placement, place_deletion
from simulations.paper.curves import Probe
from simulations.paper.results import FigureResults
from simulations.paper.settings import PaperSetup, row
from simulations.paper.sweep_plot import draw
from simulations.paper.training import HistoryRecipe, Trained, train_model

BASE = PaperSetup(dataset="mnist", models=("lenet",), epochs=3, train_samples=19_200, test_samples=5000)
QUICK_BASE = BASE.replace(epochs=2, train_samples=6400, test_samples=2000, eval_samples=1000)
KEEP_RATIOS = (0.001, 0.01, 0.03, 0.1, 0.3)
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
LRS = (0.01, 0.1)
LONG_EPOCHS = 8
SMALL = (0.01, 0.05)
LABELS = ("amnesiac", "partial_amnesiac")


def l2_norm(tensors: Iterable[torch.Tensor]) -> float:
    """The L2 norm of several tensors taken together."""
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def layer_groups(model: torch.nn.Module) -> dict[str, set[str]]:
    """Parameter names of the conv layers, the linear layers, and the last linear layer."""
    groups: dict[str, set[str]] = {"conv": set(), "linear": set(), "last": set()}
    for prefix, module in model.named_modules():
        names = {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)}
        if isinstance(module, torch.nn.Conv2d):
            groups["conv"] |= names
        elif isinstance(module, torch.nn.Linear):
            groups["linear"] |= names
            groups["last"] = names
    return groups


class SweepCell:
    """The rows of one trained model: every variant is evaluated against the same original."""

    def __init__(self, trained: Trained, profile: Profile, setup: PaperSetup) -> None:
        self.trained, self.profile, self.setup = trained, profile, setup
        self.rows: list[dict[str, Any]] = []
        model = trained.cell.model
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.displacement = l2_norm(v - trained.initial[k] for k, v in state.items())

    def split(self, placement: Placement) -> ForgetRetainSplit:
        """The forget/retain split of a placement."""
        data = self.trained.data
        return ForgetRetainSplit(data.subset_by_ids(placement.ids), data.without_ids(placement.ids))

    def evaluate(
        self,
        axis: str,
        variant: str,
        label: str,
        placement: Placement,
        *,
        history: HistoryStore | None = None,
        layers: set[str] | None = None,
    ) -> dict[str, Any]:
        """One row: ``label`` (through the shared adapter) on ``placement``, optionally on some layers only."""
        split = self.split(placement)
        delta = compute_correction(
            self.trained.cell,
            row(self.profile, label),
            self.profile,
            split,
            scenario="paper",
            seed=self.setup.seed,
            history=history,
        ).delta
        if layers is not None:
            delta = {k: v if k in layers else torch.zeros_like(v) for k, v in delta.items()}
        norm = l2_norm(delta.values())
        probe = Probe.build(split, self.trained.cell.test, cap=self.setup.eval_samples, seed=self.setup.seed)
        result = {
            "axis": axis,
            "variant": variant,
            "method": label,
            "keep_ratio": history.config.keep_ratio
            if history is not None
            else (1.0 if label == "amnesiac" else self.setup.keep_ratio),
            "affected_fraction": placement.affected_fraction,
            "forget_size": len(placement.ids),
            "original": probe.measure(self.trained.cell.model),
            **probe.measure(with_delta(self.trained.cell.model, delta)),
            "correction_ratio": norm / max(self.displacement, 1e-12),
        }
        self.rows.append(result)
        return result


def whole_class(trained: Trained, setup: PaperSetup) -> Placement:
    """Every sample of the forget class (its share of batches depends on the plan)."""
    return place_deletion(trained.data, fraction=None, kind="class", forget_class=setup.forget_class, seed=setup.seed)


def base_axes(cell: SweepCell, extras: Mapping[str, HistoryStore]) -> None:
    """Keep ratio, selection, layers and deletion placement, all on the base training."""
    setup, trained = cell.setup, cell.trained
    everything = whole_class(trained, setup)
    cell.evaluate("keep_ratio", "1", "amnesiac", everything)
    for ratio in KEEP_RATIOS:
        store = trained.cell.histories.get(ratio) or extras[f"keep-{ratio:g}"]
        cell.evaluate("keep_ratio", f"{ratio:g}", "partial_amnesiac", everything, history=store)
    cell.evaluate("selection", "top-k per step (base)", "partial_amnesiac", everything)
    cell.evaluate("selection", "random per step", "partial_amnesiac", everything, history=extras["random"])
    cell.evaluate("selection", "top-k per epoch", "partial_amnesiac", everything, history=extras["per-epoch"])
    for name, layers in layer_groups(trained.cell.model).items():
        cell.evaluate("layers", name, "partial_amnesiac", everything, layers=layers)
    retrain_axis(cell, "lr", f"{setup.lr:g}")
    retrain_axis(cell, "epochs", f"{setup.epochs}")
    retrain_axis(cell, "batches", setup.batches)
    late_axis(cell, extras)
    for kind in ("class", "sample"):
        for fraction in FRACTIONS:
            placed = place_deletion(
                trained.data, fraction=fraction, kind=kind, forget_class=setup.forget_class, seed=setup.seed
            )
            for label in LABELS:
                cell.evaluate(f"deletion_{kind}", f"{fraction:g}", label, placed)


def retrain_axis(cell: SweepCell, axis: str, variant: str) -> None:
    """Amnesiac and partial amnesiac of the whole class, and of single samples in few batches."""
    everything = whole_class(cell.trained, cell.setup)
    for label in LABELS:
        cell.evaluate(axis, variant, label, everything)
    for fraction in SMALL:
        placed = place_deletion(
            cell.trained.data, fraction=fraction, kind="sample", forget_class=0, seed=cell.setup.seed
        )
        for label in LABELS:
            cell.evaluate(f"{axis}_samples", f"{variant}, {fraction:.0%} of batches", label, placed)


def late_axis(cell: SweepCell, extras: Mapping[str, HistoryStore]) -> None:
    """Amnesiac undoing only the last epoch's steps (``late-*`` histories) of a few placements."""
    data, setup = cell.trained.data, cell.setup
    placements = [("whole class", whole_class(cell.trained, setup))] + [
        (
            f"samples, {f:.0%} of batches",
            place_deletion(data, fraction=f, kind="sample", forget_class=0, seed=setup.seed),
        )
        for f in SMALL + (0.1,)
    ]
    for name, placed in placements:
        cell.evaluate("late_epoch", name, "amnesiac", placed, history=extras["late-full"])
        cell.evaluate("late_epoch", name, "partial_amnesiac", placed, history=extras["late-partial"])


def base_extras(setup: PaperSetup) -> dict[str, HistoryRecipe]:
    """The extra histories of the base training (other rho, random selector, per epoch)."""
    ratios = {f"keep-{r:g}": HistoryRecipe(r) for r in KEEP_RATIOS if r != setup.keep_ratio}
    last = setup.epochs - 1
    return ratios | {
        "random": HistoryRecipe(setup.keep_ratio, selector="random"),
        "per-epoch": HistoryRecipe(setup.keep_ratio, per_epoch=True),
        "late-full": HistoryRecipe(1.0, from_epoch=last),
        "late-partial": HistoryRecipe(setup.keep_ratio, from_epoch=last),
    }


def variants(base: PaperSetup, model: str) -> list[tuple[str, str, PaperSetup]]:
    """(cell key, axis, setup) of every training of one model; the first is the base."""
    one = base.replace(models=(model,))
    return (
        [(f"{model}/base", "base", one)]
        + [(f"{model}/lr={lr:g}", "lr", one.replace(lr=lr)) for lr in LRS]
        + [(f"{model}/epochs={LONG_EPOCHS}", "epochs", one.replace(epochs=LONG_EPOCHS))]
        + [(f"{model}/batches=class_sorted", "batches", one.replace(batches="class_sorted"))]
    )


def compute(key: str, axis: str, setup: PaperSetup, bundle: DatasetBundle, workdir: Path) -> dict[str, Any]:
    """Train one variant and evaluate its rows."""
    profile = setup.profile(LABELS)
    extras = base_extras(setup) if axis == "base" else {}
    trained = train_model(setup, profile, bundle, setup.models[0], workdir=workdir, extras=extras)
    cell = SweepCell(trained, profile, setup)
    if axis == "base":
        base_axes(cell, trained.extras)
    else:
        value = {"lr": f"{setup.lr:g}", "epochs": f"{setup.epochs}", "batches": setup.batches}[axis]
        retrain_axis(cell, axis, value)
    return {"model": setup.models[0], "train_seconds": trained.seconds, "rows": cell.rows}


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn paper sweep``."""
    parser = cli.parser(__doc__ or "")
    args = parser.parse_args(cli.argv_list(argv))
    cli.start(args)
    base = cli.setup_from(args, quick=QUICK_BASE, full=BASE)
    check_methods(m.method for m in base.profile(LABELS).methods)
    bundle, base, facts = cli.load_data(base, data_root=args.data_root)
    settings = {
        **base.to_dict(),
        **{"keep_ratios": KEEP_RATIOS, "fractions": FRACTIONS, "lrs": LRS, "long_epochs": LONG_EPOCHS, "small": SMALL},
    }
    results = FigureResults(args.out, "sweep", settings=settings, fresh=args.fresh)
    results.note(**facts)
    jobs = [job for model in base.models for job in variants(base, model)]
    for key, axis, setup in tqdm(jobs, desc="sweep"):
        if results.done(key):
            continue
        with tempfile.TemporaryDirectory(prefix="fedunlearn-sweep-") as tmp:
            results.put(key, compute(key, axis, setup, bundle, Path(tmp)))
        draw(results.data, args.out)
    data = results.finish()
    draw(data, args.out)
    print(f"sweep: {len(data['cells'])} trainings in {data['wall_seconds']:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
