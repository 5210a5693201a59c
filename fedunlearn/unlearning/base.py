"""The one contract every unlearning method implements, and the method registry.

A method gets the current model, the forget/retain split and its config, and returns a
``Correction``: the change to apply to the model's floating-point state. Returning a change
(not a model) lets the same code serve centrally (apply it) and federatedly (the forgetting
client sends it; the server applies it, possibly scaled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fedunlearn.config import TrainConfig, UnlearnConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnknownMethodError
from fedunlearn.types import Delta

if TYPE_CHECKING:
    from fedunlearn.history import HistoryStore


@dataclass(frozen=True)
class ForgetRetainSplit:
    """The forgotten samples D_f and the retained samples D_r of whoever unlearns."""

    forget: IndexedDataset
    retain: IndexedDataset


@dataclass(frozen=True)
class UnlearnContext:
    """What some methods need beyond the split (each method documents what it reads).

    - ``history``: the client's pruned update history (amnesiac methods);
      ``history_weighted``: scale stored steps by their FedAvg round weight (federated) or not
      (centralized, w = 1);
    - ``train_config`` and ``model_factory``: retraining from scratch (RT) and fine-tuning;
    - ``remain_fisher``: the diagonal Fisher of the remaining data computed elsewhere (the
      federated SFR-on saliency mask: remaining clients send theirs, the server averages);
      when None, SFR-on computes it on ``split.retain``;
    - ``seed``: every random choice of the method derives from it.
    """

    history: HistoryStore | None = None
    history_weighted: bool = False
    train_config: TrainConfig | None = None
    model_factory: Callable[[], nn.Module] | None = None
    remain_fisher: dict[str, torch.Tensor] | None = None
    seed: int = 0
    device: torch.device | None = None


@dataclass
class Cost:
    """What serving the request cost (reported next to RT's cost)."""

    seconds: float = 0.0
    forward_backward: int = 0  # mini-batch gradient computations
    history_steps: int = 0  # stored steps read (amnesiac)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Correction:
    """The result of an unlearning method.

    ``delta``: the change to the model's floating-point state (parameters, and buffers
    where the method changes them); apply with ``fedunlearn.aggregation.add_scaled``.
    """

    method: str
    delta: Delta
    cost: Cost
    info: dict[str, Any] = field(default_factory=dict)


class UnlearningMethod(Protocol):
    """``method(model, split=..., config=..., context=...) -> Correction``.

    Must not modify ``model`` (work on a copy) and must raise ``UnlearningError`` instead of
    returning a correction with NaN/Inf entries.
    """

    def __call__(
        self, model: nn.Module, *, split: ForgetRetainSplit, config: UnlearnConfig, context: UnlearnContext
    ) -> Correction:
        """Compute the correction that unlearns ``split.forget`` from ``model``."""
        ...


_METHODS: dict[str, UnlearningMethod] = {}


def register_method(name: str) -> Callable[[UnlearningMethod], UnlearningMethod]:
    """Register an unlearning method under ``name`` (Opacus-style registry)."""

    def decorator(fn: UnlearningMethod) -> UnlearningMethod:
        if name in _METHODS:
            raise ValueError(f"unlearning method {name!r} is registered twice")
        _METHODS[name] = fn
        return fn

    return decorator


def get_method(name: str) -> UnlearningMethod:
    """Return the method registered as ``name``; UnknownMethodError lists the registered names."""
    if name not in _METHODS:
        raise UnknownMethodError(name, _METHODS)
    return _METHODS[name]


def available_methods() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(_METHODS)
