"""The ServerApp's main loop: handshake, FedAvg rounds, server-side evaluation, results."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset, build_federated_data
from fedunlearn.errors import FedUnlearnError
from fedunlearn.metrics import EvalResult, evaluate_loss_accuracy
from fedunlearn.models import build_model
from fedunlearn.results import ClientRoundRecord, RoundRecord, RunResults
from server.strategy import UnlearningFedAvg

RoundCallback = Callable[[RoundRecord], None]


@dataclass
class ServerState:
    """What the server holds between rounds: the global weights and its public test set."""

    config: FederationConfig
    strategy: UnlearningFedAvg
    arrays: ArrayRecord
    model: torch.nn.Module
    test: IndexedDataset
    results: RunResults
    initial: dict[str, torch.Tensor] = field(default_factory=dict)  # the seeded round-0 weights
    awaiting_commit: dict[str, Any] = field(default_factory=dict)  # request id -> commit Exchange
    #: Called after each round's aggregation as ``hook(state, server_round, global_before)``;
    #: ``state.strategy.last_train_replies`` holds the round's valid replies (FedEraser's
    #: server-side update log hooks in here).
    round_hooks: list[Callable[[ServerState, int, ArrayRecord], None]] = field(default_factory=list)


def initial_state(config: FederationConfig) -> ServerState:
    """Seeded initial model (same seed -> same start, as RT needs) and the server's test set."""
    data = build_federated_data(config.data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config.train.model, input_shape=data.bundle.input_shape, num_classes=data.num_classes)
    arrays = ArrayRecord(model.state_dict())
    strategy = UnlearningFedAvg(config, reference=arrays)
    results = RunResults(config=dict(config.to_run_config()))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    return ServerState(config, strategy, arrays, model, data.test, results, initial=initial)


def discover_nodes(grid: Grid, state: ServerState, *, wait_seconds: float) -> None:
    """Ask every node for its partition id; wait until ``num_clients`` distinct sites answered."""
    strategy, expected = state.strategy, state.config.data.num_clients
    deadline = time.monotonic() + wait_seconds
    while len(strategy.partition_of) < expected:
        unknown = [n for n in grid.get_node_ids() if n not in strategy.partition_of]
        messages = [
            strategy.build_message(n, protocol.QUERY_STATUS, arrays=None, config=ConfigRecord()) for n in unknown
        ]
        for reply in grid.send_and_receive(messages, timeout=min(60.0, wait_seconds)) if messages else []:
            if not reply.has_error():
                status = reply.content.config_records[protocol.STATUS]
                strategy.partition_of[reply.metadata.src_node_id] = int(status[protocol.PARTITION_ID])  # type: ignore[arg-type]
        if len(strategy.partition_of) >= expected:
            break
        if time.monotonic() > deadline:
            raise FedUnlearnError(
                f"only {len(strategy.partition_of)} of {expected} clients answered within {wait_seconds:.0f} s; "
                "start more SuperNodes or lower num-clients"
            )
        time.sleep(1.0)
    pids = sorted(strategy.partition_of.values())
    if len(set(pids)) != len(pids):
        raise FedUnlearnError(
            f"two nodes claim the same partition id: {pids}; give each SuperNode its own partition-id"
        )
    log(INFO, "[HANDSHAKE] %d clients: partition ids %s", len(pids), pids)


def poll_status(grid: Grid, state: ServerState, server_round: int) -> None:
    """Ask active nodes for pending deletion requests (used after the last round)."""
    strategy = state.strategy
    config = ConfigRecord({protocol.SERVER_ROUND: server_round})
    messages = [
        strategy.build_message(n, protocol.QUERY_STATUS, arrays=None, config=config)
        for n in strategy.active_nodes(grid)
    ]
    strategy.note_status(grid.send_and_receive(messages, timeout=state.config.round_timeout))


def run_round(grid: Grid, state: ServerState, server_round: int, *, record: bool = True) -> RoundRecord:
    """One FedAvg round: train, aggregate, client evaluation, server-side test evaluation
    (appended to the run's results unless ``record`` is False)."""
    start, strategy, timeout = time.perf_counter(), state.strategy, state.config.round_timeout
    train_messages = list(strategy.configure_train(server_round, state.arrays, ConfigRecord(), grid))
    replies = list(grid.send_and_receive(train_messages, timeout=timeout))
    arrays, train_metrics = strategy.aggregate_train(server_round, replies)
    global_before = state.arrays
    if arrays is None:
        log(WARNING, "Round %d: no usable train reply; the global model is unchanged", server_round)
    else:
        state.arrays = arrays
        for hook in state.round_hooks:
            hook(state, server_round, global_before)
    eval_messages = list(strategy.configure_evaluate(server_round, state.arrays, ConfigRecord(), grid))
    eval_replies = list(grid.send_and_receive(eval_messages, timeout=timeout))
    eval_metrics = strategy.aggregate_evaluate(server_round, eval_replies)
    test = evaluate_global(state)
    row = RoundRecord(
        round=server_round,
        train_loss=_metric(train_metrics, protocol.TRAIN_LOSS),
        client_eval_accuracy=_metric(eval_metrics, protocol.EVAL_ACCURACY),
        test_accuracy=test.accuracy,
        test_loss=test.loss,
        seconds=time.perf_counter() - start,
        clients=client_records(strategy, server_round),
        failures=len(replies) - len(strategy.last_train_replies),
        messages=len(train_messages) + len(replies) + len(eval_messages) + len(eval_replies),
    )
    if record:
        state.results.rounds.append(row)
    log(
        INFO,
        "[ROUND %d] train loss %.4f | test acc %.4f | %.1f s",
        server_round,
        row.train_loss or float("nan"),
        row.test_accuracy,
        row.seconds,
    )
    return row


def evaluate_global(state: ServerState, arrays: ArrayRecord | None = None) -> EvalResult:
    """Test loss and accuracy of the global weights (or ``arrays``) on the server's test set."""
    state.model.load_state_dict((arrays or state.arrays).to_torch_state_dict())
    return evaluate_loss_accuracy(state.model, state.test)


def client_records(strategy: UnlearningFedAvg, server_round: int) -> list[ClientRoundRecord]:
    """Per-client rows of a round: weight, loss, history bytes (for the storage report)."""
    rows = []
    for message in strategy.last_train_replies:
        node, metrics = message.metadata.src_node_id, message.content.metric_records[protocol.METRICS]
        rows.append(
            ClientRoundRecord(
                partition_id=strategy.partition_of.get(node, -1),
                num_examples=int(metrics[protocol.NUM_EXAMPLES]),  # type: ignore[arg-type]
                weight=strategy.round_weights[node][server_round],
                train_loss=float(metrics[protocol.TRAIN_LOSS]),  # type: ignore[arg-type]
                history_bytes=int(metrics[protocol.HISTORY_BYTES]),  # type: ignore[arg-type]
                history_dense_bytes=int(metrics[protocol.HISTORY_DENSE_BYTES]),  # type: ignore[arg-type]
                history_round_bytes=int(metrics.get(protocol.HISTORY_ROUND_BYTES, 0)),  # type: ignore[arg-type]
            )
        )
    return sorted(rows, key=lambda r: r.partition_id)


def _metric(record: object, key: str) -> float | None:
    if record is None:
        return None
    value = record.get(key)  # type: ignore[attr-defined]
    return float(value) if isinstance(value, (int, float)) else None


def save_model(state: ServerState, name: str, arrays: ArrayRecord | None = None) -> None:
    """Save the global weights (or ``arrays``) as ``<out_dir>/<name>`` (if out_dir is set)."""
    if state.config.out_dir is not None:
        target = Path(state.config.out_dir) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save((arrays or state.arrays).to_torch_state_dict(), target)


def save_outputs(state: ServerState) -> None:
    """Write results.json and the final model under ``out_dir`` (if configured)."""
    if state.config.out_dir is None:
        return
    out = Path(state.config.out_dir)
    save_model(state, "model.pt")
    final = evaluate_global(state)
    state.results.summary.update(
        final_test_accuracy=final.accuracy,
        final_test_loss=final.loss,
        train_seconds=sum(r.seconds for r in state.results.rounds),
        train_messages=sum(r.messages for r in state.results.rounds),
        pending_requests={
            str(state.strategy.partition_of.get(n, -1)): ids for n, ids in state.strategy.announced.items() if ids
        },
        unconfirmed_requests=sorted(state.awaiting_commit),
        departed_clients=sorted(state.strategy.partition_of[n] for n in state.strategy.departed),
    )
    state.results.write(out / "results.json")
    log(INFO, "Wrote %s and %s", out / "results.json", out / "model.pt")
