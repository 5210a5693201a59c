"""Figure 3: class activation maps (Grad-CAM) of classes 3 and 1, before and after unlearning, and RT.

Per model (LeNet by default; any model with a convolution): train once, delete class 3
(the forgotten class; class 1 is a retained control), and compute the original model, RT
and every method of Figure 1. For a few test images of each class the grid shows, per
model, where the last convolutional layer finds evidence for the image's true class
(Grad-CAM, ``simulations.paper.cam``), overlaid on the image, with the predicted label
and its probability. Maps in one row share one colour scale (the original model's), so a
map that fades after unlearning is a model that no longer finds the class. The JSON also summarizes each model
on up to 300 test images per class: accuracy, mean probability of the true class, mean
Grad-CAM value.

    python -m simulations.paper fig3 --out results/paper/fig3 [--quick] [--federated]

Writes OUT/fig3.json (the maps, rounded, and the summaries) and OUT/fig3.png
(``--federated``: OUT/fig3-federated.json/.png, the models from a Flower federation).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedunlearn.data import DatasetBundle, IndexedDataset
from fedunlearn.errors import UnlearningError
from simulations.centralized_profiles import Profile
from simulations.centralized_training import capped, compute_correction, with_delta
from simulations.paper import cli
from simulations.paper.cam import grad_cam, predictions, summarize
from simulations.paper.cam_plot import plot_cams
from simulations.paper.federated import client_change, federation_facts
from simulations.paper.federation import train_federation
from simulations.paper.runner import ComputeModel, run_models
from simulations.paper.settings import CURVE_LABELS, FULL_MNIST, QUICK_MNIST, PaperSetup, row
from simulations.paper.training import delete, train_model

RETAINED_CLASS = 1
IMAGES_PER_CLASS = 3
SUMMARY_IMAGES = 300
LABELS = ("RT", *CURVE_LABELS)
QUICK = QUICK_MNIST.replace(models=("lenet",))
FULL = FULL_MNIST.replace(models=("lenet",))


def unlearned_models(
    trained: Any, setup: PaperSetup, profile: Profile, split: Any
) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """The original, RT and every method's model (through the shared adapter); failures by label."""
    models: dict[str, torch.nn.Module] = {"original": trained.cell.model}
    failed: dict[str, str] = {}
    for label in LABELS:
        try:
            correction = compute_correction(
                trained.cell, row(profile, label), profile, split, scenario="paper", seed=setup.seed
            )
        except UnlearningError as err:  # e.g. gradient ascent's loss overflowing
            failed[label] = str(err)
            continue
        models[label] = with_delta(trained.cell.model, correction.delta)
    return models, failed


def class_images(test: IndexedDataset, label: int, count: int, seed: int) -> IndexedDataset:
    """A seeded random ``count`` of the test images of class ``label``."""
    return capped(test.select(torch.from_numpy(test.labels.numpy() == label)), count, seed, 20 + label)


def variant(model: torch.nn.Module, shown: IndexedDataset, classes: dict[int, IndexedDataset]) -> dict[str, Any]:
    """One model's maps on the shown images, its predictions, and its per-class summaries."""
    maps = grad_cam(model, shown.inputs, shown.labels)
    predicted, confidence = predictions(model, shown.inputs)
    return {
        "maps": np.round(maps.numpy(), 4).tolist(),
        "predicted": predicted,
        "confidence": confidence,
        "summary": {str(c): dataclasses.asdict(summarize(model, data)) for c, data in classes.items()},
    }


def cam_cell(
    setup: PaperSetup,
    name: str,
    models: dict[str, torch.nn.Module],
    failed: dict[str, str],
    *,
    test: IndexedDataset,
    size: int,
) -> dict[str, Any]:
    """One model's grid and summaries, from its original, RT and unlearned versions."""
    classes = {c: class_images(test, c, SUMMARY_IMAGES, setup.seed) for c in (setup.forget_class, RETAINED_CLASS)}
    shown = IndexedDataset.concat([class_images(test, c, IMAGES_PER_CLASS, setup.seed + 1) for c in classes])
    return {
        "model": name,
        "deletion": {"kind": setup.delete, "forget_class": setup.forget_class, "size": size},
        "retained_class": RETAINED_CLASS,
        "images": {"pixels": np.round(shown.inputs[:, 0].numpy(), 3).tolist(), "labels": shown.labels.tolist()},
        "variants": {label: variant(m, shown, classes) for label, m in models.items()},
        "failed": failed,
    }


def compute_model(
    setup: PaperSetup, profile: Profile, bundle: DatasetBundle, name: str, *, workdir: Path
) -> dict[str, Any]:
    """One model's grid and summaries, trained centrally."""
    trained = train_model(setup, profile, bundle, name, workdir=workdir)
    placement, split = delete(trained, setup)
    models, failed = unlearned_models(trained, setup, profile, split)
    return cam_cell(setup, name, models, failed, test=trained.cell.test, size=len(placement.ids))


def federated_compute(data_root: str | None) -> ComputeModel:
    """The compute function of ``--federated``: the models come from a Flower federation in
    which client 1 deletes the class it alone holds (``simulations.paper.federated``); each
    method's model is the global model plus that client's change, with the centralized
    figure's hyper-parameters."""

    def compute(
        setup: PaperSetup, profile: Profile, bundle: DatasetBundle, name: str, *, workdir: Path
    ) -> dict[str, Any]:
        start = time.perf_counter()
        fed = train_federation(setup, name, workdir=workdir, data_root=data_root)
        seconds = time.perf_counter() - start
        models: dict[str, torch.nn.Module] = {"original": fed.model, "RT": fed.rt}
        failed: dict[str, str] = {}
        for label in CURVE_LABELS:
            try:
                models[label] = with_delta(fed.model, client_change(fed, profile, label))
            except UnlearningError as err:
                failed[label] = str(err)
        cell = cam_cell(setup, name, models, failed, test=fed.truth.test, size=len(fed.split.forget))
        return {**cell, "federation": federation_facts(fed, seconds)}

    return compute


def main(argv: Sequence[str] | None = None) -> int:
    """``fedunlearn paper fig3``."""
    parser = cli.parser(__doc__ or "")
    cli.add_federated(parser)
    args = parser.parse_args(cli.argv_list(argv))
    cli.start(args)
    setup = cli.setup_from(args, quick=QUICK, full=FULL)
    data = run_models(
        cli.figure_name("fig3", args),
        setup,
        labels=LABELS,
        compute=federated_compute(args.data_root) if args.federated else compute_model,
        draw=plot_cams,
        out=args.out,
        data_root=args.data_root,
        fresh=args.fresh,
    )
    name = cli.figure_name("fig3", args)
    print(f"{name}: {len(data['cells'])} model(s) in {data['wall_seconds']:.0f}s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
