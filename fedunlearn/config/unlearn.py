"""``unlearn.*``: how a phase serves a request, and the base of every method's own settings.

The phase-wide keys (``unlearn.method``, the verification targets, the slow-step sampling)
live in ``UnlearnConfig``. Each registered method owns a small settings dataclass derived
from ``MethodSettings``, read from ``unlearn.<method>.*`` (``unlearn.sfr_on.iters``); the
registry (``fedunlearn.unlearning``) knows which class belongs to which method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from fedunlearn.config.checks import Checks


@dataclass(frozen=True)
class MethodSettings:
    """What every method's settings share: the shape of its federated phase.

    ``outer_steps`` is the budget I of fast-slow outer steps (a verified phase may stop
    earlier); ``remain_steps`` is K, the CE steps each sampled client runs on its retained
    data per outer step (the slow, remain-preserving part; 0: no slow steps).
    """

    outer_steps: int = 3
    remain_steps: int = 5

    def slow_optimizer(self, outer_step: int) -> tuple[float, float, float] | None:
        """The slow steps' SGD (lr, momentum, weight decay) at ``outer_step``; None: the
        training's own (``train.*``). A method whose remain steps belong to its own
        optimizer (SFR-on) says so here."""
        return None

    def __post_init__(self) -> None:
        checks = Checks()
        self.check(checks)
        checks.raise_if_any()

    def check(self, checks: Checks) -> None:
        """Add this settings object's problems to ``checks`` (subclasses extend it)."""
        checks.at_least("outer-steps", self.outer_steps, 1)
        checks.at_least("remain-steps", self.remain_steps, 0)


@dataclass(frozen=True)
class UnlearnConfig:
    """``unlearn.*``: the method that serves requests, and how a phase is verified.

    A phase is committed as forgotten only when the forgetting client's criterion holds
    (its deleted samples score like its held-out data, a deleted class is at or below
    ``class_target_fa``, a known trigger's ASR is at or below ``asr_target``) and the server
    sees test accuracy fall by at most ``max_ta_drop``. ``sample_margin`` is how far above
    the held-out accuracy the deleted samples' accuracy may stay; ``mia_margin`` how far
    above 0.5 their membership AUC may stay. ``adaptive``: strengthen a phase that misses
    its criterion (and back off when accuracy falls) within its outer-step budget.
    ``remain_fraction`` of the remaining clients is sampled for each slow step (seeded;
    None: the share a training round samples, ``train.fraction``); ``parallel_slow`` sends
    the slow steps in the same exchange as the fast one, computed from the step's starting
    weights instead of the fast ones (one round trip per outer step instead of two; the
    requesters then skip their own slow steps). ``alpha`` is an optional Lookahead outer
    step (1 = off); ``apply_scale`` multiplies the forgetting client's change. ``settings``
    maps method names to their settings objects (methods not named use their defaults).
    """

    SECTION: ClassVar[str] = "unlearn"
    method: str = "partial_amnesiac"
    remain_fraction: float | None = None
    parallel_slow: bool = False
    alpha: float = 1.0
    apply_scale: float = 1.0
    max_ta_drop: float = 0.03
    sample_margin: float = 0.05
    mia_margin: float = 0.1
    class_target_fa: float = 0.1
    asr_target: float = 0.05
    adaptive: bool = True
    settings: Mapping[str, MethodSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = Checks()
        checks.require(bool(self.method), "unlearn.method must be a non-empty name, got ''")
        if self.remain_fraction is not None:
            checks.in_range("unlearn.remain-fraction", self.remain_fraction, 0.0, 1.0, low_open=True)
        checks.in_range("unlearn.alpha", self.alpha, 0.0, 1.0, low_open=True)
        checks.positive("unlearn.apply-scale", self.apply_scale)
        for name in ("max_ta_drop", "sample_margin", "mia_margin", "class_target_fa", "asr_target"):
            checks.in_range(f"unlearn.{name.replace('_', '-')}", getattr(self, name), 0.0, 1.0)
        checks.raise_if_any()
