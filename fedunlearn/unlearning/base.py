"""The one contract every unlearning method implements, its declared traits, and the registry.

A method gets the current model, the forget/retain split and its own settings, and returns a
``Correction``: the change to apply to the model's floating-point state. Returning a change
(not a model) lets the same code serve centrally (apply it) and federatedly (the forgetting
client sends it; the server applies it, possibly scaled).

Each method is registered with its settings dataclass (read from ``unlearn.<method>.*``)
and its ``MethodTraits``: what it reads and needs, and how a federated phase runs it. The
server and the client act on these traits, never on method names, so adding a method is
one new module plus its registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import torch
from torch import nn

from fedunlearn.config import MethodSettings, TrainConfig, UnlearnConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import ConfigError, UnknownMethodError
from fedunlearn.types import DeletionKind, Delta

if TYPE_CHECKING:
    from fedunlearn.history import HistoryStore

HistoryKind = Literal["none", "pruned", "dense", "server"]
FastKind = Literal["none", "once", "spread"]
Strengthen = Literal["none", "scale", "repeat"]
ALL_KINDS: frozenset[DeletionKind] = frozenset({"sample", "class", "client"})
S = TypeVar("S", bound=MethodSettings)


@dataclass(frozen=True)
class ForgetRetainSplit:
    """The forgotten samples D_f and the retained samples D_r of whoever unlearns."""

    forget: IndexedDataset
    retain: IndexedDataset


@dataclass(frozen=True)
class UnlearnContext:
    """What some methods need beyond the split (each method's traits say which).

    - ``history``: the client's update history (traits ``history`` "pruned" or "dense");
      ``history_weighted``: scale stored steps by their FedAvg round weight (federated) or
      not (centralized, w = 1);
    - ``train_config`` and ``model_factory``: retraining from scratch (RT), PGA's radius;
    - ``remain_fisher``: the diagonal Fisher of the remaining data computed elsewhere (trait
      ``needs_remain_fisher``: remaining clients send theirs, the server averages);
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
    examples: int = 0  # samples processed forward and backward
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


@dataclass(frozen=True)
class MethodTraits:
    """What a method needs and does, declared once at registration.

    - ``history``: which update history it reads (``none``, ``pruned``, ``dense``: the
      keep-ratio-1 companion history, or ``server``: the server's log of client updates);
    - ``needs_retain``: it needs the forgetting client's own retained samples D_r (a
      callable decides from the settings, e.g. amnesiac only when it fine-tunes);
    - ``needs_remain_fisher``: the remaining clients' diagonal Fisher is gathered first;
    - ``fast``: the forgetting client contributes nothing (``none``: fine-tuning), one
      correction at the first outer step (``once``), or a share at every outer step
      (``spread``: SFR-on's interleaved forget steps);
    - ``strengthen``: how a verified phase that misses its criterion pushes further: add
      more of the same correction (``scale``: history methods), ask for a fresh correction
      from the current model (``repeat``: step methods), or not at all (``none``);
    - ``server_phase``: a server-side phase serves it (FedEraser), not the fast-slow one;
    - ``kinds``: the deletion kinds it can serve;
    - ``control``: an experimental control (``none``), never counted as forgetting.
    """

    history: HistoryKind = "none"
    needs_retain: bool | Callable[[Any], bool] = False
    needs_remain_fisher: bool = False
    fast: FastKind = "once"
    strengthen: Strengthen = "repeat"
    server_phase: bool = False
    kinds: frozenset[DeletionKind] = ALL_KINDS
    control: bool = False


class UnlearningMethod(Protocol):
    """``compute(model, split=..., settings=..., context=...) -> Correction``.

    Must not modify ``model`` (work on a copy) and must raise ``UnlearningError`` instead of
    returning a correction with NaN/Inf entries.
    """

    def __call__(
        self, model: nn.Module, *, split: ForgetRetainSplit, settings: Any, context: UnlearnContext
    ) -> Correction:
        """Compute the correction that unlearns ``split.forget`` from ``model``."""
        ...


@dataclass(frozen=True)
class MethodSpec(Generic[S]):
    """A registered method: its computation, its settings type and its traits."""

    name: str
    compute: UnlearningMethod
    settings_type: type[S]
    traits: MethodTraits

    def __call__(
        self, model: nn.Module, *, split: ForgetRetainSplit, settings: S, context: UnlearnContext
    ) -> Correction:
        """Run the method (``settings`` must be this method's settings type)."""
        if not isinstance(settings, self.settings_type):
            raise ConfigError(
                f"method {self.name!r} takes {self.settings_type.__name__}, got {type(settings).__name__}"
            )
        return self.compute(model, split=split, settings=settings, context=context)

    def needs_retain(self, settings: MethodSettings) -> bool:
        """Whether the forgetting client needs its retained samples with these settings."""
        rule = self.traits.needs_retain
        return bool(rule(settings)) if callable(rule) else bool(rule)

    def defaults(self) -> S:
        """The method's default settings."""
        return self.settings_type()


_METHODS: dict[str, MethodSpec[Any]] = {}


def register_method(
    name: str, *, settings: type[MethodSettings], traits: MethodTraits
) -> Callable[[UnlearningMethod], UnlearningMethod]:
    """Register ``compute`` as method ``name`` with its settings type and traits.

    Method names must be Python identifiers (they name the ``unlearn.<method>.*`` section).
    """

    def decorator(compute: UnlearningMethod) -> UnlearningMethod:
        if name in _METHODS:
            raise ValueError(f"unlearning method {name!r} is registered twice")
        if not name.isidentifier():
            raise ValueError(f"unlearning method names must be identifiers, got {name!r}")
        _METHODS[name] = MethodSpec(name, compute, settings, traits)
        return compute

    return decorator


def get_method(name: str) -> MethodSpec[Any]:
    """Return the method registered as ``name``; UnknownMethodError lists the registered names."""
    if name not in _METHODS:
        raise UnknownMethodError(name, _METHODS)
    return _METHODS[name]


def available_methods() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(_METHODS)


def method_settings(config: UnlearnConfig, name: str | None = None) -> Any:
    """The settings of method ``name`` (default: the configured method) in ``config``."""
    spec = get_method(name or config.method)
    found = config.settings.get(spec.name)
    return found if found is not None else spec.defaults()
