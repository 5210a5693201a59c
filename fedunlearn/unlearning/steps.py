"""Plain-SGD steps on the forget set, applied whole or layer-wise partially.

Shared by label-flip and gradient ascent and their partial versions (ALGORITHMS.md,
"Label-flip and partial label-flip", "Optimization-based (gradient ascent) and its partial
version"). Each step computes ``Delta = -lr * grad`` (descent on flipped labels) or
``Delta = +lr * grad`` (ascent on true labels) of the mean CE of one D_f batch; the naive
method applies ``Delta``, the partial one ``select(Delta, rho)`` from
``fedunlearn.history.pruning.mask_layerwise``: per layer the ``ceil(rho * |Delta_l|)``
entries chosen by the selector, every other entry untouched.

The layer-wise rule is our reading of Gogineni & Nadimi 2024 (arXiv 2403.07611), whose
method text and code are not available; ``select_ratio`` (rho) and ``selector`` are
configurable.

The forward pass runs in eval mode, as the official SFR-on repository's gradient ascent
does (``self.model.eval() # important``): BatchNorm uses its running statistics and does
not update them from D_f-only batches, dropout is off. So these methods change parameters
only, and the partial versions change nothing outside their selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.config import Checks, MethodSettings
from fedunlearn.config.sections import SELECTOR_NAMES
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.history.pruning import mask_layerwise
from fedunlearn.metrics.accuracy import accuracy
from fedunlearn.types import Delta, SelectorName
from fedunlearn.unlearning.common import Workspace, check_loss


@dataclass(frozen=True)
class StepSettings(MethodSettings):
    """Settings of a method made of plain-SGD passes (label-flip, ascent, fine-tune, RL, RT).

    ``epochs`` passes over its data at ``lr`` with batches of ``batch_size``, capped at
    ``max_steps`` steps (None: no cap).
    """

    lr: float = 0.01
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 64

    def check(self, checks: Checks) -> None:
        """Add the step settings' problems."""
        super().check(checks)
        checks.positive("lr", self.lr)
        checks.at_least("epochs", self.epochs, 1)
        checks.at_least("max-steps", self.max_steps, 1, optional=True)
        checks.at_least("batch-size", self.batch_size, 1)


@dataclass(frozen=True)
class AscentSettings(StepSettings):
    """Gradient ascent: step settings plus ``target_fa``, an FA at which the ascent stops early."""

    target_fa: float | None = None

    def check(self, checks: Checks) -> None:
        """Add the ascent settings' problems."""
        super().check(checks)
        if self.target_fa is not None:
            checks.in_range("target-fa", self.target_fa, 0.0, 1.0)


def _check_selection(checks: Checks, select_ratio: float, selector: str) -> None:
    checks.in_range("select-ratio", select_ratio, 0.0, 1.0, low_open=True)
    checks.one_of("selector", selector, SELECTOR_NAMES)


@dataclass(frozen=True)
class PartialStepSettings(StepSettings):
    """A layer-wise partial step method: each step keeps ``select_ratio`` of every layer's
    entries, chosen by ``selector`` (``topk`` magnitude, or ``random`` for ablation)."""

    select_ratio: float = 0.1
    selector: SelectorName = "topk"

    def check(self, checks: Checks) -> None:
        """Add the selection's problems."""
        super().check(checks)
        _check_selection(checks, self.select_ratio, self.selector)


@dataclass(frozen=True)
class PartialAscentSettings(AscentSettings):
    """Partial gradient ascent: ascent settings plus the layer-wise selection."""

    select_ratio: float = 0.1
    selector: SelectorName = "topk"

    def check(self, checks: Checks) -> None:
        """Add the selection's problems."""
        super().check(checks)
        _check_selection(checks, self.select_ratio, self.selector)


def gradient_step(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, lr: float, ascent: bool, what: str, step: int
) -> Delta:
    """Compute the plain-SGD step on one batch without applying it: ``-+ lr * grad CE`` per parameter.

    Parameters without a gradient (frozen or unused) get a zero step. Raises UnlearningError
    if the loss is NaN/Inf.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(inputs), labels)
    check_loss(loss, what=what, step=step)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    scale = lr if ascent else -lr
    return {
        n: (g.detach() * scale if g is not None else torch.zeros_like(p))
        for (n, p), g in zip(named, grads, strict=True)
    }


def apply_step(
    model: nn.Module,
    step: Delta,
    *,
    keep_ratio: float | None,
    selector: str = "topk",
    generator: torch.Generator | None = None,
) -> Delta:
    """Add ``step`` (``keep_ratio=None``) or its layer-wise selection to the parameters in place.

    Returns what was applied (entries outside the selection are exactly zero and the
    corresponding parameters are not touched).
    """
    applied = step
    if keep_ratio is not None:
        applied = mask_layerwise(step, keep_ratio=keep_ratio, selector=selector, generator=generator)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in applied.items():
            params[name].add_(d.to(params[name].dtype))
    return applied


@dataclass(frozen=True)
class PassReport:
    """What a run of forget-set passes did: steps, epochs started, the last FA measured."""

    steps: int
    epochs: int
    fa: float | None
    fa_checks: int
    reached_target: bool


def run_forget_passes(
    ws: Workspace, data: IndexedDataset, *, ascent: bool, partial: bool, target_fa: float | None = None
) -> PassReport:
    """``settings.epochs`` passes over ``data`` (capped at ``settings.max_steps``) on ``ws.model``.

    With ``target_fa``, FA on ``ws.split.forget`` is measured before every epoch and the
    passes stop once FA <= target_fa (one evaluation pass per epoch). Updates ``ws.cost``.
    """
    config = ws.settings
    shuffle, select = ws.generator("shuffle"), ws.generator("select")
    keep = config.select_ratio if partial else None
    selector = config.selector if partial else "topk"
    budget = config.max_steps if config.max_steps is not None else math.inf
    steps, epochs, checks, fa, reached = 0, 0, 0, None, False
    ws.model.eval()
    while epochs < config.epochs and steps < budget:
        if target_fa is not None:
            fa, checks = accuracy(ws.model, ws.split.forget, device=ws.device), checks + 1
            if reached := fa <= target_fa:
                break
        epochs += 1
        for batch in data.batches(config.batch_size, shuffle=True, generator=shuffle, device=ws.device):
            step = gradient_step(
                ws.model, batch.inputs, batch.labels, lr=config.lr, ascent=ascent, what=ws.name, step=steps
            )
            apply_step(ws.model, step, keep_ratio=keep, selector=selector, generator=select)
            steps += 1
            ws.cost.examples += len(batch.labels)
            if steps >= budget:
                break
    if target_fa is not None and not reached:
        fa, checks = accuracy(ws.model, ws.split.forget, device=ws.device), checks + 1
        reached = fa <= target_fa
    ws.cost.forward_backward += steps
    ws.cost.extra.update(steps=steps, epochs=epochs, fa_checks=checks)
    return PassReport(steps, epochs, fa, checks, reached)
