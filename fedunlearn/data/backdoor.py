"""Backdoor triggers: a BadNets-style square patch, poisoned training data, triggered test sets.

Used by the client-level deletion check (DESIGN.md, Evaluation): the forgetting client
trains on data poisoned with a trigger relabelled to a target class; after unlearning, the
attack success rate on triggered test inputs should fall to the level of RT, which never
saw the trigger (Gu et al. 2019, "BadNets").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import torch

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import ConfigError
from fedunlearn.types import SampleIds

TriggerPosition: TypeAlias = Literal["bottom_right", "bottom_left", "top_right", "top_left"]
_POSITIONS: tuple[str, ...] = ("bottom_right", "bottom_left", "top_right", "top_left")


@dataclass(frozen=True)
class TriggerPattern:
    """A solid ``size`` x ``size`` square of ``value`` in one corner of every channel.

    ``value=None`` means the largest pixel value of the (normalized) inputs it is applied to,
    i.e. white; ``margin`` is the gap in pixels between the square and the image border.

    >>> TriggerPattern(size=3, value=1.0).position
    'bottom_right'
    """

    size: int = 4
    position: TriggerPosition = "bottom_right"
    value: float | None = None
    margin: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.size < 1:
            problems.append(f"trigger size must be >= 1 pixel, got {self.size}")
        if self.margin < 0:
            problems.append(f"trigger margin must be >= 0 pixels, got {self.margin}")
        if self.position not in _POSITIONS:
            problems.append(f"trigger position must be one of {list(_POSITIONS)}, got {self.position!r}")
        if self.value is not None and not np.isfinite(self.value):
            problems.append(f"trigger value must be finite or None (the inputs' max), got {self.value}")
        if problems:
            raise ConfigError(problems)

    def patch_slices(self, height: int, width: int) -> tuple[slice, slice]:
        """Return the row and column slices of the patch in a ``height`` x ``width`` image."""
        extent = self.size + self.margin
        if extent > height or extent > width:
            raise ValueError(
                f"a {self.size}-pixel trigger with margin {self.margin} does not fit a {height}x{width} "
                "image; use a smaller size or margin"
            )
        top = self.position.startswith("top")
        left = self.position.endswith("left")
        rows = slice(self.margin, extent) if top else slice(height - extent, height - self.margin)
        cols = slice(self.margin, extent) if left else slice(width - extent, width - self.margin)
        return rows, cols


def trigger_value(pattern: TriggerPattern, inputs: torch.Tensor) -> float:
    """Return the patch value: ``pattern.value``, or the largest value in ``inputs`` if None."""
    if pattern.value is not None:
        return float(pattern.value)
    if inputs.numel() == 0:
        raise ValueError("cannot take the trigger value from empty inputs; set TriggerPattern(value=...)")
    return float(inputs.max().item())


def add_trigger(inputs: torch.Tensor, pattern: TriggerPattern) -> torch.Tensor:
    """Return a copy of ``inputs`` (N, C, H, W) with the trigger patch in every image and channel.

    With ``pattern.value=None`` the patch takes the largest value of ``inputs`` itself; pass
    an explicit value (or use ``poison`` / ``triggered_test_set``, which take it from the
    whole dataset) to get the same trigger across batches.
    """
    if inputs.dim() != 4:
        raise ValueError(
            f"add_trigger expects image batches of shape (N, C, H, W), got {tuple(inputs.shape)}; "
            "triggers are not defined for tabular data"
        )
    rows, cols = pattern.patch_slices(inputs.shape[2], inputs.shape[3])
    out = inputs.clone()
    if inputs.shape[0] > 0:
        out[:, :, rows, cols] = trigger_value(pattern, inputs)
    return out


def _with_value(pattern: TriggerPattern, inputs: torch.Tensor) -> TriggerPattern:
    """Fix the pattern's value from the whole dataset (not per batch)."""
    if pattern.value is not None or inputs.numel() == 0:
        return pattern
    return TriggerPattern(pattern.size, pattern.position, trigger_value(pattern, inputs), pattern.margin)


def _check_target(dataset: IndexedDataset, target_label: int) -> None:
    if not 0 <= target_label < dataset.num_classes:
        raise ValueError(f"target_label must be in [0, {dataset.num_classes}), got {target_label}")


def select_poison_ids(dataset: IndexedDataset, *, fraction: float, target_label: int, seed: int) -> SampleIds:
    """Return the sample ids ``poison`` would poison, sorted.

    These are ``round(fraction * len(dataset))`` ids drawn at random
    (``numpy.random.default_rng(seed)``) among samples whose label is not the target.
    Drawing only from non-target samples makes every poisoned sample a label change. Raises
    ValueError if ``fraction`` is outside [0, 1] or too few non-target samples exist.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    _check_target(dataset, target_label)
    count = int(round(fraction * len(dataset)))
    candidates = np.flatnonzero(dataset.labels.numpy() != target_label)
    if count > len(candidates):
        raise ValueError(
            f"cannot poison {count} samples (fraction {fraction} of {len(dataset)}): only {len(candidates)} "
            f"have a label other than the target {target_label}; lower the fraction"
        )
    chosen = np.random.default_rng(seed).choice(candidates, size=count, replace=False)
    return np.sort(dataset.ids()[chosen]).astype(np.int64)


def poison(
    dataset: IndexedDataset, *, fraction: float, target_label: int, pattern: TriggerPattern, seed: int
) -> IndexedDataset:
    """Return a copy of ``dataset`` whose seeded random ``fraction`` carries trigger and target.

    Poisoned samples get the trigger patch and the label ``target_label``. Samples keep
    their ids and positions, so the poisoned ones can be forgotten by id; they are
    ``select_poison_ids(dataset, fraction=..., target_label=..., seed=...)``. Exactly
    ``round(fraction * len(dataset))`` labels change (all poisoned samples come from
    non-target classes). The trigger value defaults to the dataset's largest input value.
    """
    ids = select_poison_ids(dataset, fraction=fraction, target_label=target_label, seed=seed)
    positions = torch.from_numpy(dataset.positions_of(ids)) if len(ids) else torch.empty(0, dtype=torch.int64)
    pattern = _with_value(pattern, dataset.inputs)
    inputs, labels = dataset.inputs.clone(), dataset.labels.clone()
    inputs[positions] = add_trigger(dataset.inputs[positions], pattern)
    labels[positions] = target_label
    return IndexedDataset(inputs, labels, dataset.sample_ids.clone(), dataset.num_classes)


def triggered_test_set(test: IndexedDataset, *, target_label: int, pattern: TriggerPattern) -> IndexedDataset:
    """Return the test samples whose true label is not ``target_label``, with the trigger added.

    Labels stay the true labels (ids too), so the same set measures both the attack success
    rate (prediction == target) and accuracy under the trigger. The trigger value defaults
    to the test set's largest input value.
    """
    _check_target(test, target_label)
    kept = test.select(test.labels != target_label)
    pattern = _with_value(pattern, test.inputs)
    return IndexedDataset(add_trigger(kept.inputs, pattern), kept.labels, kept.sample_ids, kept.num_classes)
