"""FedEraser in the method registry: a server-side phase that rebuilds the model without a client.

The reconstruction itself is ``fedunlearn.federaser`` (math and update log) and
``server.federaser`` (the Flower phase). Registering it here declares its traits: the server
serves it with its own phase (``server_phase``), for client-level deletions only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedunlearn.config import Checks, MethodSettings
from fedunlearn.errors import UnlearningError
from fedunlearn.federaser import CALIBRATION_RATIO, RETAIN_INTERVAL
from fedunlearn.unlearning.base import Correction, ForgetRetainSplit, MethodTraits, UnlearnContext, register_method


@dataclass(frozen=True)
class FedEraserSettings(MethodSettings):
    """FedEraser's settings: the retained-round ``interval`` (Δt) and the ``calibration_ratio`` r."""

    interval: int = RETAIN_INTERVAL
    calibration_ratio: float = CALIBRATION_RATIO

    def check(self, checks: Checks) -> None:
        """Add FedEraser's problems."""
        super().check(checks)
        checks.at_least("interval", self.interval, 1)
        checks.in_range("calibration-ratio", self.calibration_ratio, 0.0, 1.0, low_open=True)


@register_method(
    "federaser",
    settings=FedEraserSettings,
    traits=MethodTraits(
        history="server", server_phase=True, fast="none", strengthen="none", kinds=frozenset({"client"})
    ),
)
def federaser(
    model: nn.Module, *, split: ForgetRetainSplit, settings: FedEraserSettings, context: UnlearnContext
) -> Correction:
    """FedEraser has no client-side correction: the server rebuilds the model (``server_phase``)."""
    raise UnlearningError("federaser is served by the server's reconstruction phase, not by a client correction")
