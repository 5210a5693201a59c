"""What every unlearning method shares: the working copy, seeding, the registration wrapper.

``unlearning_method(name)`` turns a method *body* ``body(ws) -> Delta`` into a registered
``UnlearningMethod``. The wrapper, once for all methods:

- registers the method with its settings type and traits (``fedunlearn.unlearning.base``);
- returns an all-zero correction for an EMPTY forget set (nothing to forget, so the weights
  stay bit-identical, whatever the method; no history, factory or D_r is needed);
- raises ``UnlearningError("D_r is empty; ...")`` when the method needs retained data and
  the forget set is the whole data;
- gives the body a deep copy of the model on ``context.device`` (else the model's device),
  so the input model is never modified;
- seeds torch's global RNG from ``context.seed`` inside a forked RNG state (dropout and
  model initialisation become reproducible; the caller's RNG is left as it was);
- completes the body's delta with zeros for the floating-point state entries it did not
  change, moves it to the input model's device (float32), and raises UnlearningError if the
  delta or the corrected state holds NaN/Inf (a broken model is never returned).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedunlearn.config import MethodSettings
from fedunlearn.errors import UnlearningError
from fedunlearn.metrics.accuracy import model_device
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import (
    Correction,
    Cost,
    ForgetRetainSplit,
    MethodTraits,
    UnlearnContext,
    UnlearningMethod,
    get_method,
    register_method,
)


@dataclass
class Workspace:
    """What a method body works with: a private copy of the model and the request.

    ``model`` is a deep copy on ``device`` that the body may change freely; ``original`` is
    the input model (read-only); ``settings`` are the method's own (``unlearn.<method>.*``);
    ``cost`` and ``info`` are returned in the Correction.
    """

    name: str
    model: nn.Module
    original: nn.Module
    device: torch.device
    split: ForgetRetainSplit
    settings: Any
    context: UnlearnContext
    cost: Cost = field(default_factory=Cost)
    info: dict[str, Any] = field(default_factory=dict)

    def generator(self, purpose: str) -> torch.Generator:
        """Return a CPU generator seeded from ``context.seed`` and ``purpose`` (independent streams).

        The stream does not depend on the method, so with one seed a naive method and its
        partial version see the same wrong labels and the same batch order (paired comparison).
        """
        return derive_generator(self.context.seed, purpose)

    def change(self) -> Delta:
        """Return the working model's float state minus the input model's (every float entry)."""
        return state_difference(float_state(self.model), float_state(self.original))


MethodBody = Callable[[Workspace], Delta]


def derive_generator(seed: int, purpose: str) -> torch.Generator:
    """Return a CPU ``torch.Generator`` seeded by a stable hash of ``(seed, purpose)``.

    Different purposes (shuffling, wrong labels, random selection) get independent streams,
    and adding a new random draw to one purpose does not shift the others.

    >>> derive_generator(0, "x").initial_seed() == derive_generator(0, "x").initial_seed()
    True
    >>> derive_generator(0, "x").initial_seed() == derive_generator(1, "x").initial_seed()
    False
    """
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's global RNG (CPU and ``device``) seeded, then restore it."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached clones of the model's floating-point state entries (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def state_difference(after: Mapping[str, torch.Tensor], before: Mapping[str, torch.Tensor]) -> Delta:
    """``after - before`` key by key in float32 (on ``after``'s device)."""
    return {k: after[k].detach().float() - before[k].detach().to(after[k].device).float() for k in before}


def check_loss(loss: torch.Tensor, *, what: str, step: int) -> float:
    """Return the loss as a float; raise UnlearningError if it is NaN or Inf."""
    value = float(loss.detach().item())
    if not math.isfinite(value):
        raise UnlearningError(
            f"{what}: the loss became {value} at step {step}; the model is not returned. Lower the "
            "learning rate (or the forget scale / clip norm) and check the model has no NaN/Inf weights."
        )
    return value


def require_retain(split: ForgetRetainSplit, name: str) -> None:
    """Raise UnlearningError when D_r is empty (the forget set is the whole data)."""
    if len(split.retain) == 0:
        raise UnlearningError(
            f"D_r is empty; method {name!r} needs retained samples, but the forget set "
            f"({len(split.forget)} samples) is the whole data. Use a method that works on D_f "
            "alone (amnesiac without fine-tuning, label_flip, gradient_ascent) or retrain without this client."
        )


def complete_delta(delta: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> Delta:
    """Float32 delta over every float entry of ``reference`` (zeros where ``delta`` has none)."""
    unknown = sorted(set(delta) - set(reference))
    if unknown:
        raise UnlearningError(f"the correction names state entries the model does not have: {unknown[:5]}")
    out: Delta = {}
    for key, ref in reference.items():
        d = delta.get(key)
        if d is None:
            out[key] = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
        elif tuple(d.shape) != tuple(ref.shape):
            raise UnlearningError(f"correction entry {key!r} has shape {tuple(d.shape)}, the model {tuple(ref.shape)}")
        else:
            out[key] = d.detach().to(device=ref.device, dtype=torch.float32)
    return out


def check_finite_result(name: str, delta: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """Raise UnlearningError if the delta or ``reference + delta`` has NaN/Inf entries."""
    bad = [k for k, d in delta.items() if not bool(torch.isfinite(d).all())]
    bad += [k for k, d in delta.items() if k not in bad and not bool(torch.isfinite(reference[k].float() + d).all())]
    if bad:
        raise UnlearningError(
            f"method {name!r} produced NaN/Inf in {', '.join(bad[:5])}; the correction is withheld. "
            "Lower the learning rate or check the model and history for NaN/Inf values."
        )


def unlearning_method(
    name: str, *, settings: type[MethodSettings], traits: MethodTraits
) -> Callable[[MethodBody], UnlearningMethod]:
    """Register ``body(ws) -> Delta`` as unlearning method ``name`` (see the module docstring)."""

    def decorator(body: MethodBody) -> UnlearningMethod:
        @functools.wraps(body)
        def method(model: nn.Module, *, split: ForgetRetainSplit, settings: Any, context: UnlearnContext) -> Correction:
            start = time.perf_counter()
            reference = float_state(model)
            if len(split.forget) == 0:
                zeros = complete_delta({}, reference)
                return Correction(name, zeros, Cost(), {"skipped": "empty forget set: nothing to forget"})
            if get_method(name).needs_retain(settings):
                require_retain(split, name)
            device = context.device or model_device(model)
            ws = Workspace(name, copy.deepcopy(model).to(device), model, device, split, settings, context)
            with seeded_rng(context.seed, device):
                delta = complete_delta(body(ws), reference)
            check_finite_result(name, delta, reference)
            ws.cost.seconds = time.perf_counter() - start
            return Correction(name, delta, ws.cost, ws.info)

        register_method(name, settings=settings, traits=traits)(method)
        return method

    return decorator
