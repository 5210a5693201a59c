"""Cross-entropy descent on data: the remain (slow) steps, fine-tuning, and their batch streams.

``remain_steps`` is what a remaining client runs in the federated fast-slow phase
(ALGORITHMS.md, "Federated fast-slow aggregation", step 2): K CE descent steps on its
retained data from the weights it was sent, returning the change. ``sgd_descent`` is the
loop behind it and behind the ``finetune``, ``random_label`` and amnesiac fine-tuning
methods. (``fedunlearn.training.train_local`` is not used here because it has no step
budget and cannot cycle over a dataset smaller than K batches; RT uses it.)
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import torch
from torch import nn

from fedunlearn.data.indexed import Batch, IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.metrics.accuracy import model_device
from fedunlearn.types import Delta
from fedunlearn.unlearning.common import check_loss, derive_generator, float_state, seeded_rng, state_difference


def batch_stream(
    dataset: IndexedDataset,
    batch_size: int,
    *,
    generator: torch.Generator,
    device: torch.device,
    epochs: int | None = None,
    steps: int | None = None,
) -> Iterator[Batch]:
    """Shuffled mini-batches: ``epochs`` passes (None: cycle forever), at most ``steps`` batches.

    Every pass reshuffles with ``generator`` (as a shuffling DataLoader restarted by the
    official code's ``cycle``). Raises UnlearningError on an empty dataset.
    """
    if len(dataset) == 0:
        raise UnlearningError("cannot draw batches from an empty dataset")
    passes = itertools.count() if epochs is None else range(epochs)
    stream = (
        batch for _ in passes for batch in dataset.batches(batch_size, shuffle=True, generator=generator, device=device)
    )
    return stream if steps is None else itertools.islice(stream, steps)


def ce_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, *, what: str, step: int) -> float:
    """One optimizer step on the mean cross-entropy of ``batch``; returns the loss.

    Raises UnlearningError (before stepping) if the loss is NaN/Inf.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(batch.inputs), batch.labels)
    value = check_loss(loss, what=what, step=step)
    torch.autograd.backward(loss)
    optimizer.step()
    return value


def sgd_descent(
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    epochs: int | None = None,
    steps: int | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    what: str = "descent on D_r",
) -> int:
    """Train ``model`` in place (train mode) with SGD on CE; return the number of steps.

    The budget is ``epochs`` passes capped at ``steps`` batches, or (``epochs=None``)
    exactly ``steps`` batches cycling over the data.
    """
    if epochs is None and steps is None:
        raise ValueError("sgd_descent needs epochs or steps")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    taken = 0
    for batch in batch_stream(dataset, batch_size, generator=generator, device=device, epochs=epochs, steps=steps):
        ce_step(model, optimizer, batch, what=what, step=taken)
        taken += 1
    return taken


def remain_steps(
    model: nn.Module,
    retain: IndexedDataset,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    device: torch.device | None = None,
) -> Delta:
    """K CE descent steps on retained data from the given weights: ``theta_after - theta_before``.

    The slow, remain-preserving correction of one remaining client (ALGORITHMS.md,
    "Federated fast-slow aggregation"): plain CE, no mask, no clipping, a fresh SGD
    optimizer, batches cycled over ``retain`` with a shuffle seeded by ``seed``.
    ``model`` is not modified. The delta covers every floating-point state entry (BatchNorm
    running statistics move in train mode) and lives on the model's device.

    Raises
    ------
    UnlearningError
        ``retain`` is empty, a loss or the result is NaN/Inf.

    >>> net = nn.Linear(2, 2)
    >>> data = IndexedDataset(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.arange(4), 2)
    >>> sorted(remain_steps(net, data, steps=3, lr=0.1, batch_size=2, seed=0))
    ['bias', 'weight']
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if len(retain) == 0:
        raise UnlearningError(
            "D_r is empty; remain steps need retained samples. Leave this client out of the slow step."
        )
    home = model_device(model)
    run_on = device or home
    work = copy.deepcopy(model).to(run_on)
    if steps > 0:
        with seeded_rng(seed, run_on):
            sgd_descent(
                work,
                retain,
                lr=lr,
                batch_size=batch_size,
                generator=derive_generator(seed, "remain/shuffle"),
                device=run_on,
                steps=steps,
                momentum=momentum,
                weight_decay=weight_decay,
                what="remain step",
            )
    delta = {k: v.to(home) for k, v in state_difference(float_state(work), float_state(model)).items()}
    if not all(bool(torch.isfinite(d).all()) for d in delta.values()):
        raise UnlearningError("remain steps produced NaN/Inf weights; lower the learning rate")
    return delta
