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

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.history.pruning import mask_layerwise
from fedunlearn.metrics.accuracy import accuracy
from fedunlearn.types import Delta
from fedunlearn.unlearning.common import Workspace, check_loss


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
    """``config.epochs`` passes over ``data`` (capped at ``config.max_steps`` steps) on ``ws.model``.

    With ``target_fa``, FA on ``ws.split.forget`` is measured before every epoch and the
    passes stop once FA <= target_fa (one evaluation pass per epoch). Updates ``ws.cost``.
    """
    config = ws.config
    shuffle, select = ws.generator("shuffle"), ws.generator("select")
    keep = config.select_ratio if partial else None
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
            apply_step(ws.model, step, keep_ratio=keep, selector=config.selector, generator=select)
            steps += 1
            if steps >= budget:
                break
    if target_fa is not None and not reached:
        fa, checks = accuracy(ws.model, ws.split.forget, device=ws.device), checks + 1
        reached = fa <= target_fa
    ws.cost.forward_backward += steps
    ws.cost.extra.update(steps=steps, epochs=epochs, fa_checks=checks)
    return PassReport(steps, epochs, fa, checks, reached)
