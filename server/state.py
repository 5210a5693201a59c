"""What the server holds between rounds, and the few things it does with it alone.

The global weights, its public test set, the run's results, and the model lineage: the name
under which every client keeps the update history of this model, across resumed runs.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import log

from fedunlearn.atomic import write_bytes_atomic
from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset, build_federated_data
from fedunlearn.metrics import EvalResult, evaluate_loss_accuracy
from fedunlearn.models import build_model
from fedunlearn.results import RunResults
from server.strategy import UnlearningFedAvg


@dataclass
class ServerState:
    """The global weights and everything the server keeps between rounds and phases.

    ``next_round`` is the first round still to train (a resumed run starts past 1);
    ``awaiting_commit`` maps request ids to the commit exchange of a phase whose client has
    not confirmed yet; ``round_hooks`` run after each round's aggregation as
    ``hook(state, server_round, global_before)`` (FedEraser's update log hooks in here).
    """

    config: FederationConfig
    strategy: UnlearningFedAvg
    arrays: ArrayRecord
    model: torch.nn.Module
    test: IndexedDataset
    results: RunResults
    lineage: str
    next_round: int = 1
    initial: dict[str, torch.Tensor] = field(default_factory=dict)
    awaiting_commit: dict[str, Any] = field(default_factory=dict)
    round_hooks: list[Callable[[ServerState, int, ArrayRecord], None]] = field(default_factory=list)

    @property
    def server_dir(self) -> Path:
        """The server's own state folder (checkpoints, FedEraser's log)."""
        return Path(self.config.run.state_root) / "server"

    @property
    def out_dir(self) -> Path:
        """Where results go: ``run.out-dir``, else ``runs/<lineage>`` beside the state root."""
        if self.config.run.out_dir:
            return Path(self.config.run.out_dir)
        return Path(self.config.run.state_root).parent / "runs" / self.lineage


def initial_state(config: FederationConfig, *, flat_config: dict[str, Any]) -> ServerState:
    """Seeded initial model (same seed -> same start, as RT needs) and the server's test set."""
    data = build_federated_data(config.data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config.train.model, input_shape=data.bundle.input_shape, num_classes=data.num_classes)
    arrays = ArrayRecord(model.state_dict())
    strategy = UnlearningFedAvg(config, reference=arrays, flat_config=flat_config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    lineage = f"run-{uuid.uuid4().hex[:12]}"
    strategy.lineage = lineage
    return ServerState(
        config, strategy, arrays, model, data.test, RunResults(config=flat_config), lineage, initial=initial
    )


def evaluate_global(state: ServerState, arrays: ArrayRecord | None = None) -> EvalResult:
    """Test loss and accuracy of the global weights (or ``arrays``) on the server's test set."""
    state.model.load_state_dict((arrays or state.arrays).to_torch_state_dict())
    return evaluate_loss_accuracy(state.model, state.test)


def save_model(state: ServerState, name: str, arrays: ArrayRecord | None = None) -> None:
    """Save the global weights (or ``arrays``) as ``<out_dir>/<name>``, atomically: a new file
    replaces the old one, never rewritten in place."""
    buffer = io.BytesIO()
    torch.save((arrays or state.arrays).to_torch_state_dict(), buffer)
    write_bytes_atomic(state.out_dir / name, buffer.getvalue())


def save_outputs(state: ServerState) -> None:
    """Write results.json and the final model under ``out_dir``."""
    out = state.out_dir.resolve()
    save_model(state, "model.pt")
    final = evaluate_global(state)
    strategy = state.strategy
    state.results.summary.update(
        lineage=state.lineage,
        final_test_accuracy=final.accuracy,
        final_test_loss=final.loss,
        train_seconds=sum(r.seconds for r in state.results.rounds),
        train_messages=sum(r.messages for r in state.results.rounds),
        pending_requests={str(strategy.partition_of.get(n, -1)): ids for n, ids in strategy.announced.items() if ids},
        unconfirmed_requests=sorted(state.awaiting_commit),
        departed_clients=sorted(strategy.partition_of[n] for n in strategy.departed if n in strategy.partition_of),
    )
    state.results.write(out / "results.json")
    log(INFO, "Wrote %s and %s", out / "results.json", out / "model.pt")
