"""An in-memory dataset whose every sample carries a stable integer id.

Sample ids are what deletion requests, update histories and receipts talk about, so they
travel with the tensors through every subset and batch. Tensors stay in memory: the 28x28
sets used here fit easily, and batching by index is much faster than a DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fedunlearn.errors import DeletionRequestError
from fedunlearn.types import SampleIds


@dataclass(frozen=True)
class Batch:
    """One mini-batch: inputs, labels and the ids of its samples."""

    inputs: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor


@dataclass(frozen=True)
class IndexedDataset:
    """Inputs, integer labels and unique sample ids of equal length.

    >>> ds = IndexedDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 1]), torch.tensor([7, 8, 9]), 2)
    >>> ds.subset_by_ids(np.array([9, 7])).sample_ids.tolist()
    [7, 9]
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        if self.labels.shape != (n,) or self.sample_ids.shape != (n,):
            raise ValueError(
                f"inputs, labels and sample_ids must have the same length; got {n}, "
                f"{tuple(self.labels.shape)}, {tuple(self.sample_ids.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.sample_ids.dtype != torch.int64:
            raise ValueError(f"labels and sample_ids must be int64, got {self.labels.dtype}, {self.sample_ids.dtype}")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (C, H, W) for images, (F,) for tabular data."""
        return tuple(self.inputs.shape[1:])

    def ids(self) -> SampleIds:
        """The sample ids as a numpy int64 array."""
        return self.sample_ids.numpy().astype(np.int64, copy=False)

    def select(self, positions: torch.Tensor | np.ndarray) -> IndexedDataset:
        """Rows at the given positions (a bool mask or integer positions)."""
        pos = torch.as_tensor(positions)
        return IndexedDataset(self.inputs[pos], self.labels[pos], self.sample_ids[pos], self.num_classes)

    def positions_of(self, sample_ids: SampleIds) -> np.ndarray:
        """Positions of the given ids; raises DeletionRequestError naming ids not present."""
        wanted = np.unique(np.asarray(sample_ids, dtype=np.int64))
        mine = self.ids()
        present = np.isin(wanted, mine)
        if not np.all(present):
            missing = wanted[~present]
            shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise DeletionRequestError(
                f"{len(missing)} sample id(s) are not in this dataset: {shown}. "
                "Use ids from this client's partition (see its sample id list)."
            )
        return np.flatnonzero(np.isin(mine, wanted))

    def subset_by_ids(self, sample_ids: SampleIds) -> IndexedDataset:
        """The samples with the given ids (all must be present), in dataset order."""
        return self.select(self.positions_of(sample_ids))

    def without_ids(self, sample_ids: SampleIds) -> IndexedDataset:
        """The samples whose ids are not in ``sample_ids`` (unknown ids are ignored)."""
        keep = ~np.isin(self.ids(), np.asarray(sample_ids, dtype=np.int64))
        return self.select(torch.from_numpy(keep))

    def with_labels(self, labels: torch.Tensor) -> IndexedDataset:
        """The same samples with other labels (label-flip unlearning, backdoor poisoning)."""
        return IndexedDataset(self.inputs, labels.to(torch.int64), self.sample_ids, self.num_classes)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        even: bool = False,
    ) -> Iterator[Batch]:
        """Yield mini-batches; with ``shuffle`` the order comes from ``generator`` (reproducible).

        ``even``: the same number of batches, their sizes differing by at most one, instead of
        full batches and a remainder (a remainder of a few samples skews BatchNorm's running
        statistics).
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        parts = (
            torch.tensor_split(order, self.num_batches(batch_size))
            if even and n
            else [order[start : start + batch_size] for start in range(0, n, batch_size)]
        )
        for idx in parts:
            yield Batch(
                self.inputs[idx].to(device) if device is not None else self.inputs[idx],
                self.labels[idx].to(device) if device is not None else self.labels[idx],
                self.sample_ids[idx],
            )

    def num_batches(self, batch_size: int) -> int:
        """How many batches ``batches(batch_size)`` yields."""
        return (len(self) + batch_size - 1) // batch_size

    @staticmethod
    def concat(parts: list[IndexedDataset]) -> IndexedDataset:
        """Concatenate datasets of the same kind (ids must stay unique)."""
        if not parts:
            raise ValueError("concat needs at least one dataset")
        return IndexedDataset(
            torch.cat([p.inputs for p in parts]),
            torch.cat([p.labels for p in parts]),
            torch.cat([p.sample_ids for p in parts]),
            parts[0].num_classes,
        )
