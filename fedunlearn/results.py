"""Machine-readable records of a federated run, written atomically as JSON."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedunlearn.atomic import write_json_atomic


@dataclass
class ClientRoundRecord:
    """One client's part in one FedAvg round."""

    partition_id: int
    num_examples: int
    weight: float
    train_loss: float
    history_bytes: int = 0
    history_dense_bytes: int = 0
    history_round_bytes: int = 0


@dataclass
class RoundRecord:
    """What one round did to the global model (accuracies are fractions in [0, 1])."""

    round: int
    train_loss: float | None
    client_eval_accuracy: float | None
    test_accuracy: float | None
    test_loss: float | None
    seconds: float
    clients: list[ClientRoundRecord] = field(default_factory=list)
    failures: int = 0
    messages: int = 0
    round_trips: int = 0
    bytes_down: int = 0  # model-sized payloads sent to clients
    bytes_up: int = 0  # and received from them
    client_steps: int = 0  # SGD steps of all clients together
    client_examples: int = 0  # samples those steps processed (forward and backward)


@dataclass
class RunResults:
    """Everything a run writes to ``results.json``; later phases (unlearning) append events."""

    config: dict[str, Any]
    rounds: list[RoundRecord] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The results as plain JSON-ready data."""
        return dataclasses.asdict(self)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON atomically (a crash never leaves a half-written file)."""
        return write_json_atomic(path, self.to_dict())
