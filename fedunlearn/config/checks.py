"""Collect every validation problem of a config, then raise once (Opacus ``ModuleValidator`` style)."""

from __future__ import annotations

import math

from fedunlearn.errors import ConfigError


class Checks:
    """Collects validation problems so a config reports all of them at once.

    >>> checks = Checks()
    >>> checks.positive("lr", -1.0)
    >>> checks.problems
    ['lr must be > 0, got -1.0']
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def require(self, ok: bool, message: str) -> None:
        """Record ``message`` unless ``ok``."""
        if not ok:
            self.problems.append(message)

    def in_range(self, name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
        """``value`` must lie in ``[low, high]`` (``(low, high]`` with ``low_open``) and not be NaN."""
        lower_ok = value > low if low_open else value >= low
        bracket = "(" if low_open else "["
        self.require(
            lower_ok and value <= high and not math.isnan(value),
            f"{name} must be in {bracket}{low}, {high}], got {value}",
        )

    def positive(self, name: str, value: float) -> None:
        """``value`` must be a finite number > 0."""
        self._finite_then(name, value, value > 0, "> 0")

    def non_negative(self, name: str, value: float) -> None:
        """``value`` must be a finite number >= 0."""
        self._finite_then(name, value, value >= 0, ">= 0")

    def at_least(self, name: str, value: int | None, low: int, *, optional: bool = False) -> None:
        """An integer count: ``value >= low`` (or None when ``optional``)."""
        if value is None and optional:
            return
        self.require(
            value is not None and value >= low, f"{name} must be >= {low}{' or unset' if optional else ''}, got {value}"
        )

    def _finite_then(self, name: str, value: float, ok: bool, bound: str) -> None:
        if not math.isfinite(value):
            self.problems.append(f"{name} must be a finite number {bound}, got {value}")
        else:
            self.require(ok, f"{name} must be {bound}, got {value}")

    def one_of(self, name: str, value: str, allowed: tuple[str, ...]) -> None:
        """``value`` must be one of ``allowed``."""
        self.require(value in allowed, f"{name} must be one of {', '.join(allowed)}; got {value!r}")

    def raise_if_any(self) -> None:
        """Raise one ConfigError holding every problem found."""
        if self.problems:
            raise ConfigError(self.problems)
