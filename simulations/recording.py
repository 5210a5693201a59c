"""Training observers for the runners: FA/RA curves next to the history recorders.

``train_local(..., observer=FanOut(rec_full, rec_partial, curves))`` (``FanOut`` from
``fedunlearn.training``) records the same steps
into a full (keep_ratio 1.0) and a pruned history at once, which is cheaper than training
twice and guarantees both histories describe the same model, while ``CurveLogger`` measures
accuracy on the targeted and retained data for the seed paper's Figures 1-2.
"""

from __future__ import annotations

import torch
from torch import nn

from fedunlearn.data import IndexedDataset
from fedunlearn.metrics import accuracy


class CurveLogger:
    """A ``StepObserver`` measuring FA/RA of each scenario ``points_per_epoch`` times per epoch.

    ``probes`` maps a scenario name to (forget set, retained set) samples to measure on;
    ``per_epoch`` is the number of steps of an epoch (x axis in epochs); measurements fall
    at evenly spaced steps, the last one at the end of the epoch. Call ``measure``
    once before training for the starting point. Evaluation runs in eval mode without
    gradients and restores the model's train flags, so training is unaffected.
    """

    def __init__(
        self, probes: dict[str, tuple[IndexedDataset, IndexedDataset]], *, points_per_epoch: int, per_epoch: int
    ) -> None:
        self.probes, self.per_epoch, self.step = probes, per_epoch, 0
        self.marks = {round(i * per_epoch / points_per_epoch) for i in range(1, points_per_epoch)} | {0}
        self.curves: dict[str, dict[str, list[float]]] = {s: {"epoch": [], "FA": [], "RA": []} for s in probes}

    def measure(self, model: nn.Module) -> None:
        """Append the current FA and RA of every scenario."""
        for scenario, (forget, retain) in self.probes.items():
            curve = self.curves[scenario]
            curve["epoch"].append(self.step / self.per_epoch)
            curve["FA"].append(accuracy(model, forget))
            curve["RA"].append(accuracy(model, retain))

    def before_step(self, model: nn.Module) -> None:
        """Do nothing (measurements are taken after steps)."""

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        """Count the step; measure at the evenly spaced marks of the epoch."""
        self.step += 1
        if self.step % self.per_epoch in self.marks:
            self.measure(model)
