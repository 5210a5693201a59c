"""Label-flip and partial label-flip unlearning: descend on D_f relabelled with wrong labels.

ALGORITHMS.md, "Label-flip and partial label-flip" (seed: Gogineni & Nadimi 2024; the
relabelling idea goes back to Graves et al. 2021). Every forgotten sample gets one random
*wrong* label, drawn once per run from ``context.seed``; then ``settings.epochs`` passes of
plain SGD (lr ``settings.lr``, batch ``settings.batch_size``, at most ``settings.max_steps``
steps) on the relabelled D_f. ``label_flip`` applies each step whole; ``partial_label_flip``
applies only its layer-wise selection (``settings.select_ratio``, ``settings.selector``).
See ``fedunlearn.unlearning.steps`` for the step and its eval-mode forward pass.
"""

from __future__ import annotations

import warnings

import torch

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import Workspace, unlearning_method
from fedunlearn.unlearning.steps import PartialStepSettings, StepSettings, run_forget_passes

#: Label-flip runs fresh steps from whatever model it is given: a verified phase repeats it.
TRAITS = MethodTraits(fast="once", strengthen="repeat")


def wrong_labels(labels: torch.Tensor, num_classes: int, *, generator: torch.Generator) -> torch.Tensor:
    """Draw a uniformly random label different from each true label (``(y + U{1..C-1}) mod C``).

    >>> y = torch.tensor([0, 1, 2, 2])
    >>> bool((wrong_labels(y, 3, generator=torch.Generator().manual_seed(0)) != y).all())
    True
    """
    if num_classes < 2:
        raise UnlearningError(f"a wrong label needs at least 2 classes, got num_classes={num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        low, high = int(labels.min()), int(labels.max())
        raise UnlearningError(f"labels must lie in [0, {num_classes}), got values in [{low}, {high}]")
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, dtype=torch.int64)
    return (labels.cpu() + shift) % num_classes


def relabel_wrong(dataset: IndexedDataset, *, generator: torch.Generator) -> IndexedDataset:
    """Return the same samples, each with a random wrong label (fixed for the returned dataset)."""
    return dataset.with_labels(wrong_labels(dataset.labels, dataset.num_classes, generator=generator))


def _label_flip(ws: Workspace, *, partial: bool) -> Delta:
    flipped = relabel_wrong(ws.split.forget, generator=ws.generator("wrong-labels"))
    run_forget_passes(ws, flipped, ascent=False, partial=partial)
    return ws.change()


@unlearning_method("label_flip", settings=StepSettings, traits=TRAITS)
def label_flip(ws: Workspace) -> Delta:
    """Naive label-flip: every SGD step on the wrongly labelled D_f is applied whole.

    Reads ``epochs``, ``max_steps``, ``batch_size``, ``lr`` and ``context.seed``.
    """
    return _label_flip(ws, partial=False)


@unlearning_method("partial_label_flip", settings=PartialStepSettings, traits=TRAITS)
def partial_label_flip(ws: Workspace) -> Delta:
    """Partial label-flip: each step restricted to its layer-wise selection.

    Reads what ``label_flip`` reads plus ``select_ratio`` (rho) and ``selector``; warns when
    ``select_ratio`` is 1.0 (then it equals ``label_flip``).
    """
    if ws.settings.select_ratio == 1.0:
        warnings.warn("partial_label_flip with select_ratio=1.0 selects every entry: it is label_flip", stacklevel=3)
    ws.info["select_ratio"] = ws.settings.select_ratio
    return _label_flip(ws, partial=True)
