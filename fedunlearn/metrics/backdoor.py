"""Backdoor attack success rate (ASR), the client-level deletion check of DESIGN.md."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fedunlearn.data.backdoor import TriggerPattern, triggered_test_set
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics.accuracy import DEFAULT_BATCH_SIZE, predict_logits


@dataclass(frozen=True)
class BackdoorSpec:
    """The backdoor to check: the attacker's target label and trigger.

    >>> BackdoorSpec(target_label=0).pattern.size
    4
    """

    target_label: int
    pattern: TriggerPattern = field(default_factory=TriggerPattern)


def attack_success_rate(
    model: nn.Module,
    test: IndexedDataset,
    *,
    target_label: int,
    pattern: TriggerPattern,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """Compute the attack success rate (ASR) of a backdoor trigger on ``test``.

    ASR is the fraction of triggered test inputs whose true label is not the target that
    the model classifies as ``target_label`` (ALGORITHMS.md, Metrics). The triggered set
    is ``triggered_test_set(test, target_label=..., pattern=...)``. Returns ``nan`` when
    every test sample has the target label (nothing to attack).
    """
    triggered = triggered_test_set(test, target_label=target_label, pattern=pattern)
    if len(triggered) == 0:
        return math.nan
    logits = predict_logits(model, triggered, batch_size=batch_size, device=device)
    return float((logits.argmax(dim=1) == target_label).double().mean().item())
