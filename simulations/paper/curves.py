"""Accuracy on the forgotten and the retained data over the unlearning steps (Figures 1-2).

Every point is computed through the shared adapter (``compute_correction``), so the curves
show exactly what the registered methods do:

- history methods (amnesiac, partial amnesiac): the stored steps of the affected batches
  are subtracted batch by batch. Batches are fixed across epochs (``batches.py``), so the
  forget set splits into disjoint per-batch parts whose stored steps do not overlap; the
  correction of each block of batches is computed on its own and the corrections are
  summed. The last point is the method's full correction. The x value is the number of
  stored steps subtracted so far (``Cost.history_steps``).
- step methods (label-flip, gradient ascent, and their partial versions): point k is the
  method run with a budget of k steps (``max_steps=k``); one seed gives the same batches
  and wrong labels whatever the budget, so the points are prefixes of one run. A method
  that fails (gradient ascent's loss can overflow) ends its curve; ``diverged_at`` records
  the first budget that failed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.data import IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.metrics import accuracy
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import ForgetRetainSplit
from simulations.centralized_profiles import MethodSpec, Profile
from simulations.centralized_training import capped, compute_correction, method_settings, with_delta
from simulations.paper.training import Trained

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """The evaluation sets of a curve: forgotten, retained and test samples (capped, seeded)."""

    forget: IndexedDataset
    retain: IndexedDataset
    test: IndexedDataset

    @classmethod
    def build(cls, split: ForgetRetainSplit, test: IndexedDataset, *, cap: int, seed: int) -> Probe:
        """Cap each set at ``cap`` samples (streams 11-13 of ``seed``)."""
        return cls(
            capped(split.forget, cap, seed, 11), capped(split.retain, cap, seed, 12), capped(test, cap, seed, 13)
        )

    def measure(self, model: nn.Module) -> dict[str, float]:
        """FA, RA and TA of ``model`` (fractions)."""
        return {
            "FA": accuracy(model, self.forget),
            "RA": accuracy(model, self.retain),
            "TA": accuracy(model, self.test),
        }


@dataclass
class Curve:
    """One method's accuracies after 0, ..., ``budget`` unlearning steps (``unit`` names them)."""

    label: str
    unit: str
    budget: int
    steps: list[int] = field(default_factory=list)
    FA: list[float] = field(default_factory=list)
    RA: list[float] = field(default_factory=list)
    TA: list[float] = field(default_factory=list)
    diverged_at: int | None = None

    def add(self, step: int, values: dict[str, float]) -> None:
        """Append one point."""
        self.steps.append(step)
        for key in ("FA", "RA", "TA"):
            getattr(self, key).append(values[key])

    def final(self) -> dict[str, float]:
        """The last point's FA, RA, TA."""
        return {k: getattr(self, k)[-1] for k in ("FA", "RA", "TA")}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


def history_deltas(
    trained: Trained, spec: MethodSpec, profile: Profile, split: ForgetRetainSplit, *, blocks: int, seed: int
) -> Iterator[tuple[int, Delta]]:
    """(stored steps subtracted so far, summed correction) after each of ``blocks`` blocks of batches.

    Each block's correction is computed on its own through the adapter; batches are fixed,
    so blocks touch disjoint stored steps and the running sum ends at the full correction.
    """
    batch_of = trained.data.plan.batch_of(len(trained.data))
    owner = batch_of[trained.data.positions_of(split.forget.ids())]
    total: Delta | None = None
    steps = 0
    for block in np.array_split(np.unique(owner), min(blocks, len(np.unique(owner)))):
        part = ForgetRetainSplit(split.forget.select(torch.from_numpy(np.isin(owner, block))), split.retain)
        correction = compute_correction(trained.cell, spec, profile, part, scenario="paper", seed=seed)
        steps += correction.cost.history_steps
        total = correction.delta if total is None else {k: total[k] + v for k, v in correction.delta.items()}
        yield steps, total


def history_curve(
    trained: Trained,
    spec: MethodSpec,
    profile: Profile,
    split: ForgetRetainSplit,
    probe: Probe,
    *,
    points: int,
    seed: int,
) -> Curve:
    """Subtract the affected batches' stored steps block by block (see the module docstring)."""
    budget = len(trained.cell.histories[1.0].affected_steps(split.forget.ids()))
    curve = Curve(spec.label, "stored steps subtracted", budget)
    curve.add(0, probe.measure(trained.cell.model))
    for steps, total in history_deltas(trained, spec, profile, split, blocks=points - 1, seed=seed):
        curve.add(steps, probe.measure(with_delta(trained.cell.model, total)))
    return curve


def step_budget(spec: MethodSpec, profile: Profile, forget_size: int) -> int:
    """How many steps a step method takes on ``forget_size`` samples with its settings."""
    settings = method_settings(spec, profile, "paper")
    steps = settings.epochs * math.ceil(forget_size / settings.batch_size)
    return int(steps if settings.max_steps is None else min(steps, settings.max_steps))


def step_curve(
    trained: Trained,
    spec: MethodSpec,
    profile: Profile,
    split: ForgetRetainSplit,
    probe: Probe,
    *,
    points: int,
    seed: int,
) -> Curve:
    """The method run with budgets of 0 .. all of its steps (``points`` budgets, evenly spaced)."""
    budget = step_budget(spec, profile, len(split.forget))
    curve = Curve(spec.label, "unlearning SGD steps", budget)
    curve.add(0, probe.measure(trained.cell.model))
    for k in sorted({int(round(x)) for x in np.linspace(0, budget, points)} - {0}):
        try:
            correction = compute_correction(
                trained.cell, spec, profile, split, scenario="paper", seed=seed, extra={"max_steps": k}
            )
        except UnlearningError as err:  # ascent can blow up: the curve ends where the method fails
            logger.warning("%s diverged within %d steps: %s", spec.label, k, err)
            curve.diverged_at = k
            break
        curve.add(k, probe.measure(with_delta(trained.cell.model, correction.delta)))
    return curve


def unlearning_curve(
    trained: Trained,
    spec: MethodSpec,
    profile: Profile,
    split: ForgetRetainSplit,
    probe: Probe,
    *,
    points: int,
    seed: int,
) -> Curve:
    """The curve of row ``spec``: history methods subtract stored steps, the others take SGD steps."""
    make = history_curve if spec.history is not None else step_curve
    return make(trained, spec, profile, split, probe, points=points, seed=seed)
