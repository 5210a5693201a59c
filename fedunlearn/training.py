"""Local SGD training with an optional step observer (the update-history recorder hooks in here)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from fedunlearn.config import TrainConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import TrainingError

logger = logging.getLogger(__name__)


class StepObserver(Protocol):
    """Sees the model just before and just after every optimizer step.

    The history recorder implements this to store ``theta_after - theta_before`` of each step
    (ALGORITHMS.md, "Update history"), so momentum and weight decay are included.
    """

    def before_step(self, model: nn.Module) -> None:
        """Called right before ``optimizer.step()``."""

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        """Called right after ``optimizer.step()`` with the batch's sample ids."""


class FanOut:
    """A StepObserver forwarding every call to several observers, in order (e.g. a pruned and
    a full history recorded from one training run, so both describe the same model)."""

    def __init__(self, *observers: StepObserver) -> None:
        self.observers = observers

    def before_step(self, model: nn.Module) -> None:
        """Forward to every observer."""
        for observer in self.observers:
            observer.before_step(model)

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        """Forward to every observer."""
        for observer in self.observers:
            observer.after_step(model, sample_ids)


@dataclass(frozen=True)
class TrainResult:
    """What one call of local training did."""

    num_examples: int
    steps: int
    mean_loss: float
    seconds: float
    examples: int = 0  # samples processed forward and backward (num_examples x epochs)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(model: nn.Module, config: TrainConfig, *, lr: float | None = None) -> torch.optim.SGD:
    """Plain SGD as configured (``lr`` overrides the config's)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr if lr is None else lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers (they then train on batches of even size)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_local(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    config: TrainConfig,
    seed: int,
    observer: StepObserver | None = None,
    epochs: int | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` with mini-batch SGD, shuffling with ``seed``.

    A fresh optimizer per call matches FedAvg clients, which start each round from the
    global weights. Every random draw (the shuffle, and dropout through torch's global RNG,
    forked and seeded here) comes from ``seed``, so the same seed gives the same model
    whichever process runs it and whatever it ran before. Raises TrainingError if the loss
    becomes NaN/Inf (never returns a broken model silently).
    """
    device = device or resolve_device(config.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(model, dataset, config=config, seed=seed, observer=observer, epochs=epochs, device=device)


def _train(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    config: TrainConfig,
    seed: int,
    observer: StepObserver | None,
    epochs: int | None,
    device: torch.device,
) -> TrainResult:
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    even = has_batch_norm(model)  # no tiny remainder batch to skew the running statistics
    start, total_loss, steps, examples = time.perf_counter(), 0.0, 0, 0
    for _ in range(config.local_epochs if epochs is None else epochs):
        for batch in dataset.batches(config.batch_size, shuffle=True, generator=generator, device=device, even=even):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(batch.inputs), batch.labels)
            if not math.isfinite(loss.item()):
                raise TrainingError(f"training loss became {loss.item()} at step {steps}; lower the learning rate")
            torch.autograd.backward(loss)
            if observer is not None:
                observer.before_step(model)
            optimizer.step()
            if observer is not None:
                observer.after_step(model, batch.sample_ids)
            total_loss += loss.item()
            steps += 1
            examples += len(batch.labels)
    return TrainResult(len(dataset), steps, total_loss / max(steps, 1), time.perf_counter() - start, examples)
