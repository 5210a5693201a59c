"""Predictions, accuracy and loss of a model on an IndexedDataset (FA, RA, TA).

All evaluation runs with the model in eval mode and without gradients, and leaves every
submodule's train/eval flag as it found it, so a metric can be computed in the middle of
training or unlearning without side effects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset

DEFAULT_BATCH_SIZE = 512


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy loss and accuracy of a model on one dataset.

    Both are ``nan`` when ``num_examples`` is 0.

    >>> EvalResult(loss=0.5, accuracy=0.9, num_examples=10).accuracy
    0.9
    """

    loss: float
    accuracy: float
    num_examples: int


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with gradients off; restore each submodule's flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, was_training in flags:
            module.training = was_training


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU if it has none)."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _check_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """Return the device to run on; the model is never moved, so it must already live there."""
    here = model_device(model)
    if device is None:
        return here
    wanted = torch.device(device)
    if wanted.type != here.type:
        raise ValueError(
            f"device={wanted} was requested but the model lives on {here}; "
            f"move the model first (model.to({str(wanted)!r})) or pass device=None"
        )
    return wanted


def predict_logits(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Compute the model's logits for every sample of ``dataset``, in order, on the CPU.

    Parameters
    ----------
    model
        Any classifier mapping a batch of inputs to ``(batch, num_classes)`` logits.
    dataset
        The samples to score.
    batch_size
        Samples per forward pass.
    device
        Where to run; the model is not moved, so it must already be there. ``None``: the
        model's own device.

    Returns
    -------
    torch.Tensor
        ``(len(dataset), num_classes)`` float32 logits; ``(0, dataset.num_classes)`` for an
        empty dataset. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    run_on = _check_device(model, device)
    outputs: list[torch.Tensor] = []
    with evaluation_mode(model):
        for batch in dataset.batches(batch_size, device=run_on):
            outputs.append(model(batch.inputs).detach().float().cpu())
    if not outputs:
        return torch.empty(0, dataset.num_classes)
    return torch.cat(outputs)


def accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label; ``nan`` for zero rows."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits have {logits.shape[0]} rows but there are {labels.shape[0]} labels")
    if labels.numel() == 0:
        return math.nan
    correct = logits.argmax(dim=1).cpu() == labels.cpu()
    return float(correct.double().mean().item())


def accuracy(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] (FA, RA or TA, depending on the dataset).

    An empty dataset gives ``float('nan')`` rather than an exception, so a table of
    metrics can still be written when, say, a forget set is empty; check with
    ``math.isnan``.
    """
    logits = predict_logits(model, dataset, batch_size=batch_size, device=device)
    return accuracy_from_logits(logits, dataset.labels)


def evaluate_loss_accuracy(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Mean cross-entropy loss and top-1 accuracy (both ``nan`` on an empty dataset)."""
    logits = predict_logits(model, dataset, batch_size=batch_size, device=device)
    n = len(dataset)
    if n == 0:
        return EvalResult(loss=math.nan, accuracy=math.nan, num_examples=0)
    loss = nn.functional.cross_entropy(logits.double(), dataset.labels, reduction="mean")
    return EvalResult(loss=float(loss.item()), accuracy=accuracy_from_logits(logits, dataset.labels), num_examples=n)
