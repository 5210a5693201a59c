"""Fixed class-stratified batches, and deletions placed to touch an exact share of them.

The paper's Figure 4 plots unlearning efficacy against the percentage of training batches
that held a deleted sample. With batches reshuffled every epoch that percentage can only be
aimed at; here it is set exactly:

- ``stratified_plan`` deals the training samples into B fixed batches (the same samples
  form a batch in every epoch; only the order of the batches is reshuffled per epoch), each
  with every class in proportion, so every batch holds a sample of any class that has at
  least B samples (``class_sorted_plan``, for contrast, gives nearly single-class batches);
- ``FixedBatchDataset`` makes ``fedunlearn.training.train_local`` train on those batches;
- ``place_deletion`` picks ``round(p * B)`` batches (nested: the batches of a smaller p are
  among those of a larger one) and deletes from each either every sample of the forget
  class (``kind="class"``; p = 1 is the whole class) or one random sample
  (``kind="sample"``). Each batch is one stored step per epoch, so exactly ``p`` of the
  recorded steps are affected (when ``p * B`` is an integer).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from fedunlearn.data.indexed import Batch, IndexedDataset
from fedunlearn.errors import ConfigError

DeletionKind = Literal["class", "sample"]
DELETION_KINDS: tuple[DeletionKind, ...] = ("class", "sample")


@dataclass(frozen=True, eq=False)
class BatchPlan:
    """A fixed partition of dataset positions into batches (``groups[b]``: positions of batch b)."""

    groups: tuple[np.ndarray, ...]
    batch_size: int

    @property
    def num_batches(self) -> int:
        """B, the number of batches of one epoch."""
        return len(self.groups)

    def batch_of(self, size: int) -> np.ndarray:
        """Batch index of every position ``0 .. size-1``."""
        owner = np.full(size, -1, dtype=np.int64)
        for b, positions in enumerate(self.groups):
            owner[positions] = b
        if (owner < 0).any():
            raise ConfigError(f"the batch plan leaves {(owner < 0).sum()} of {size} positions out")
        return owner


def class_sorted_plan(labels: np.ndarray, *, batch_size: int, seed: int) -> BatchPlan:
    """Consecutive batches of a class-sorted order: nearly every batch holds one class only.

    The opposite of ``stratified_plan``: deleting a class then touches only that class's
    batches (about 1/C of them), as when data arrive sorted or a client holds few classes.

    >>> plan = class_sorted_plan(np.array([1, 0, 1, 0]), batch_size=2, seed=0)
    >>> [np.array([1, 0, 1, 0])[g].tolist() for g in plan.groups]
    [[0, 0], [1, 1]]
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng([seed, 7]).permutation(len(labels))
    order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    return BatchPlan(tuple(np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)), batch_size)


def stratified_plan(labels: np.ndarray, *, batch_size: int, seed: int) -> BatchPlan:
    """Deal ``len(labels)`` positions into ``ceil(n / batch_size)`` batches, classes spread evenly.

    Positions are shuffled (seeded), sorted by class, and dealt round-robin, so batch b gets
    floor or ceil of ``n_c / B`` samples of each class c.

    >>> plan = stratified_plan(np.array([0, 0, 0, 0, 1, 1, 1, 1]), batch_size=4, seed=0)
    >>> [sorted(np.array([0, 0, 0, 0, 1, 1, 1, 1])[g].tolist()) for g in plan.groups]
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = len(labels)
    count = max(1, -(-n // batch_size))
    order = np.random.default_rng([seed, 7]).permutation(n)
    order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    slot = np.arange(n) % count
    return BatchPlan(tuple(np.sort(order[slot == b]) for b in range(count)), batch_size)


@dataclass(frozen=True, eq=False)
class FixedBatchDataset(IndexedDataset):
    """An IndexedDataset whose ``batches`` are the plan's fixed batches, in a reshuffled order.

    ``train_local`` calls ``batches(batch_size, shuffle=True, generator=...)``; the generator
    then permutes the order of the batches, not their members. Batches are dealt evenly
    (sizes differ by at most one), so no epoch ends on a tiny batch, which would jolt
    BatchNorm statistics. Subsets (``select``, ``without_ids``, ...) are plain
    IndexedDatasets.
    """

    plan: BatchPlan

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plan.batch_of(len(self))  # every position in exactly one batch

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        even: bool = False,
    ) -> Iterator[Batch]:
        """Yield the plan's batches (reordered with ``generator`` when ``shuffle``).

        Another ``batch_size`` (a method's own passes over D_r, say) gets ordinary batches
        (``even`` as in ``IndexedDataset.batches``); the plan's own batches are what they are.
        """
        if batch_size != self.plan.batch_size:
            yield from super().batches(batch_size, shuffle=shuffle, generator=generator, device=device, even=even)
            return
        count = self.plan.num_batches
        order = torch.randperm(count, generator=generator).tolist() if shuffle else range(count)
        for b in order:
            idx = torch.from_numpy(self.plan.groups[b])
            inputs, labels = self.inputs[idx], self.labels[idx]
            yield Batch(
                inputs.to(device) if device is not None else inputs,
                labels.to(device) if device is not None else labels,
                self.sample_ids[idx],
            )

    def num_batches(self, batch_size: int) -> int:
        """B (the plan's batch count) for the plan's batch size."""
        return self.plan.num_batches if batch_size == self.plan.batch_size else super().num_batches(batch_size)


#: How training samples are dealt into fixed batches (``PaperSetup.batches``).
PLANS = {"stratified": stratified_plan, "class_sorted": class_sorted_plan}


def with_plan(data: IndexedDataset, *, batch_size: int, seed: int, kind: str = "stratified") -> FixedBatchDataset:
    """``data`` with a seeded fixed batch plan of ``kind`` (a key of ``PLANS``)."""
    if kind not in PLANS:
        raise ConfigError(f"batch plan must be one of {sorted(PLANS)}, got {kind!r}")
    plan = PLANS[kind](data.labels.numpy(), batch_size=batch_size, seed=seed)
    return FixedBatchDataset(data.inputs, data.labels, data.sample_ids, data.num_classes, plan)


@dataclass(frozen=True)
class Placement:
    """A deletion request placed on the batch plan.

    ``ids``: the deleted sample ids; ``batches``: the batches holding them;
    ``affected_fraction``: ``len(batches) / B``, the share of recorded steps they touch.
    """

    kind: DeletionKind
    target_fraction: float | None
    ids: np.ndarray
    batches: np.ndarray
    affected_fraction: float


def place_deletion(
    data: FixedBatchDataset, *, fraction: float | None, kind: DeletionKind, forget_class: int, seed: int
) -> Placement:
    """Delete from ``round(fraction * B)`` batches, nested over ``fraction`` for one seed.

    ``kind="class"``: every ``forget_class`` sample of the chosen batches (only batches with
    one are eligible); ``kind="sample"``: one seeded random sample of each chosen batch.
    ``fraction=None``: every eligible batch (with "class": the whole class, whatever share
    of the batches holds it). Raises ConfigError when fewer eligible batches exist than
    asked for.
    """
    if kind not in DELETION_KINDS:
        raise ConfigError(f"deletion kind must be one of {DELETION_KINDS}, got {kind!r}")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the affected fraction must be in (0, 1], got {fraction}")
    labels, groups = data.labels.numpy(), data.plan.groups
    eligible = [b for b, g in enumerate(groups) if kind == "sample" or (labels[g] == forget_class).any()]
    wanted = len(eligible) if fraction is None else max(1, round(fraction * len(groups)))
    if wanted > len(eligible):
        raise ConfigError(
            f"{fraction:.0%} of {len(groups)} batches is {wanted} batches, but only {len(eligible)} hold a sample of "
            f"class {forget_class}; use a smaller fraction, kind='sample', or a larger batch size"
        )
    chosen = np.sort(np.random.default_rng([seed, 8]).permutation(eligible)[:wanted])
    if kind == "class":
        positions = np.concatenate([groups[b][labels[groups[b]] == forget_class] for b in chosen])
    else:
        positions = np.array([np.random.default_rng([seed, 9, b]).choice(groups[b]) for b in chosen])
    ids = np.sort(data.ids()[positions])
    return Placement(kind, fraction, ids, chosen, len(chosen) / len(groups))
