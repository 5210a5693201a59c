"""What the history store returns: affected steps, summed deltas and storage accounting."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedunlearn.types import SampleIds


@dataclass(frozen=True)
class StepRef:
    """One stored local step: its round, its position in the round, and its batch's sample ids."""

    round: int
    step: int
    sample_ids: SampleIds = field(compare=False, repr=False)


@dataclass(frozen=True)
class HistorySum:
    """The (weighted) sum of the stored deltas of the steps that touched some sample ids.

    ``delta`` holds one dense float32 tensor per parameter name (zeros where nothing was
    stored); ``num_steps`` steps from ``rounds`` contributed; ``unmatched_ids`` are the
    requested ids that no stored step contains (e.g. purged already, or never trained on).
    """

    delta: dict[str, torch.Tensor]
    num_steps: int
    rounds: tuple[int, ...]
    unmatched_ids: SampleIds = field(compare=False)


@dataclass(frozen=True)
class RoundUsage:
    """Storage of one round: bytes on disk versus dense float32 amnesiac storage."""

    round: int
    file: str
    bytes: int
    steps: int
    dense_bytes: int
    weight: float | None

    @property
    def ratio(self) -> float:
        """Return bytes / dense_bytes (0.0 for a round without steps)."""
        return self.bytes / self.dense_bytes if self.dense_bytes else 0.0


@dataclass(frozen=True)
class StorageUsage:
    """Storage of a whole history; ``disk_bytes`` includes the manifest and per-round indexes."""

    disk_bytes: int
    dense_bytes: int
    manifest_bytes: int
    rounds: tuple[RoundUsage, ...]

    @property
    def ratio(self) -> float:
        """Return on-disk bytes / dense bytes (0.0 while nothing is recorded)."""
        return self.disk_bytes / self.dense_bytes if self.dense_bytes else 0.0
