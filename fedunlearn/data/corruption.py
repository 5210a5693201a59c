"""Label corruption: a seeded share of samples with a wrong label (memorised-sample scenarios).

The sample-level deletion check needs samples that the trained model can only classify
"correctly" (by their recorded label) if it memorised them: a wrong label is the simplest
such sample. A model that never saw them (RT) predicts their true class, so the accuracy on
the forgotten samples *with their recorded labels* is high before unlearning and near zero
after a successful one. ``mislabel`` mirrors ``fedunlearn.data.backdoor.poison``: ids and
positions are unchanged, the chosen ids are ``select_mislabel_ids(...)``, and everything is
deterministic for a seed.

>>> ds = IndexedDataset(torch.zeros(10, 1, 2, 2), torch.arange(10) % 3, torch.arange(100, 110), 3)
>>> bad = mislabel(ds, fraction=0.3, seed=0)
>>> changed_ids(ds, bad).tolist() == select_mislabel_ids(ds, fraction=0.3, seed=0).tolist()
True
"""

from __future__ import annotations

import numpy as np
import torch

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.types import SampleIds

__all__ = ["changed_ids", "mislabel", "select_mislabel_ids", "wrong_label_for"]


def _check_fraction(fraction: float) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    return value


def _check_labels(dataset: IndexedDataset) -> None:
    if dataset.num_classes < 2:
        raise ValueError(
            f"a wrong label needs at least 2 classes, but the dataset has num_classes={dataset.num_classes}"
        )
    labels = dataset.labels
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= dataset.num_classes):
        raise ValueError(
            f"labels must lie in [0, {dataset.num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )


def _draw(dataset: IndexedDataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions to corrupt (ascending) and one shift in ``1..C-1`` for each, from one seeded stream.

    The positions are drawn first, so ``select_mislabel_ids`` and ``mislabel`` agree.
    """
    value = _check_fraction(fraction)
    _check_labels(dataset)
    n = len(dataset)
    count = int(round(value * n))
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(n, size=count, replace=False)) if count else np.empty(0, dtype=np.int64)
    shifts = rng.integers(1, dataset.num_classes, size=count)
    return positions.astype(np.int64), shifts.astype(np.int64)


def select_mislabel_ids(dataset: IndexedDataset, *, fraction: float, seed: int) -> SampleIds:
    """Return the sample ids ``mislabel`` gives a wrong label, sorted.

    Parameters
    ----------
    dataset
        The samples to draw from (any labels in ``[0, num_classes)``).
    fraction
        Share of the samples to corrupt, in [0, 1]; ``round(fraction * len(dataset))`` are drawn.
    seed
        Seeds ``numpy.random.default_rng``; the same seed gives the same ids.

    Returns
    -------
    SampleIds
        Sorted int64 ids (empty when the count rounds to 0).

    Raises
    ------
    ValueError
        ``fraction`` is outside [0, 1], ``num_classes < 2``, or a label is out of range.
    """
    positions, _ = _draw(dataset, fraction, seed)
    return np.sort(dataset.ids()[positions]).astype(np.int64)


def wrong_label_for(labels: torch.Tensor, shifts: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """``(labels + shifts) mod num_classes``: a label different from each true label when every
    shift lies in ``1..num_classes-1`` (uniform shifts give a uniform wrong label).

    Raises
    ------
    ValueError
        A shift is outside ``1..num_classes-1`` (it would keep or wrap to the true label), or
        the shapes differ.

    >>> wrong_label_for(torch.tensor([0, 9]), torch.tensor([1, 1]), 10).tolist()
    [1, 0]
    """
    shift = torch.as_tensor(shifts, dtype=torch.int64)
    if shift.shape != labels.shape:
        raise ValueError(f"need one shift per label, got shapes {tuple(shift.shape)} and {tuple(labels.shape)}")
    if shift.numel() and (int(shift.min()) < 1 or int(shift.max()) >= num_classes):
        raise ValueError(f"shifts must lie in [1, {num_classes - 1}] so the label changes, got {shift.tolist()[:10]}")
    return (labels.to(torch.int64) + shift) % num_classes


def mislabel(dataset: IndexedDataset, *, fraction: float, seed: int) -> IndexedDataset:
    """Return a copy of ``dataset`` in which a seeded random ``fraction`` carries a wrong label.

    Each chosen sample gets one label drawn uniformly among the ``num_classes - 1`` labels
    other than its own (never its true label). Inputs, ids and positions are unchanged, so
    the corrupted samples can be forgotten by id; they are
    ``select_mislabel_ids(dataset, fraction=fraction, seed=seed)``. The input dataset is not
    modified.

    Parameters
    ----------
    dataset
        The clean samples.
    fraction
        Share of samples to corrupt, in [0, 1] (``round(fraction * len(dataset))`` of them).
    seed
        Seeds both the choice of samples and their wrong labels.

    Returns
    -------
    IndexedDataset
        Same inputs and ids, labels changed at the chosen positions.

    Raises
    ------
    ValueError
        ``fraction`` is outside [0, 1], ``num_classes < 2``, or a label is out of range.
    """
    positions, shifts = _draw(dataset, fraction, seed)
    labels = dataset.labels.clone()
    if len(positions):
        pos = torch.from_numpy(positions)
        labels[pos] = wrong_label_for(labels[pos], torch.from_numpy(shifts), dataset.num_classes)
    return IndexedDataset(dataset.inputs.clone(), labels, dataset.sample_ids.clone(), dataset.num_classes)


def changed_ids(original: IndexedDataset, modified: IndexedDataset) -> SampleIds:
    """Return the ids whose label or input differs between two aligned copies of a dataset, sorted.

    Works for any corruption that keeps ids and positions (``mislabel``, ``backdoor.poison``):
    these are the "corrupted" samples a scenario deletes, found from the data rather than
    re-derived from the seed.

    Raises
    ------
    ValueError
        The two datasets do not hold the same ids in the same order, or their inputs differ in shape.
    """
    if not torch.equal(original.sample_ids, modified.sample_ids):
        raise ValueError("changed_ids needs two copies of one dataset: the sample ids (or their order) differ")
    if original.inputs.shape != modified.inputs.shape:
        raise ValueError(
            f"changed_ids needs inputs of the same shape, got {tuple(original.inputs.shape)} and "
            f"{tuple(modified.inputs.shape)}"
        )
    n = len(original)
    differs = original.labels != modified.labels
    if n:
        differs |= (original.inputs.reshape(n, -1) != modified.inputs.reshape(n, -1)).any(dim=1)
    return np.sort(original.ids()[differs.numpy()]).astype(np.int64)
