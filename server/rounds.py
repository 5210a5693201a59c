"""FedAvg rounds on the Flower grid: the handshake, one round, and the between-round poll."""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ConfigRecord
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.errors import FedUnlearnError
from fedunlearn.results import ClientRoundRecord, RoundRecord
from server.phase.exchange import payload_bytes
from server.state import ServerState, evaluate_global
from server.strategy import UnlearningFedAvg


def discover_nodes(grid: Grid, state: ServerState, *, wait_seconds: float) -> None:
    """Ask every node for its partition id and partition count; wait until all partitions answered.

    The federation's size is Flower's to say: each node reports the ``num-partitions`` of its
    own ``node_config``. Nodes that disagree on it, or claim one partition twice, stop the
    run at once with one line saying how to fix the node configs.
    """
    strategy = state.strategy
    counts: dict[int, int] = {}
    deadline = time.monotonic() + wait_seconds
    while True:
        unknown = [n for n in grid.get_node_ids() if n not in strategy.partition_of]
        messages = [
            strategy.build_message(n, protocol.QUERY_STATUS, arrays=None, config=ConfigRecord()) for n in unknown
        ]
        for reply in grid.send_and_receive(messages, timeout=min(60.0, wait_seconds)) if messages else []:
            if reply.has_error():
                raise FedUnlearnError(f"node {reply.metadata.src_node_id} failed the handshake: {reply.error.reason}")
            status = reply.content.config_records[protocol.STATUS]
            strategy.partition_of[reply.metadata.src_node_id] = int(status[protocol.PARTITION_ID])  # type: ignore[arg-type]
            counts[reply.metadata.src_node_id] = int(status[protocol.NUM_PARTITIONS])  # type: ignore[arg-type]
        _check_agreement(strategy, counts)
        expected = max(counts.values(), default=0)
        if expected and len(strategy.partition_of) >= expected:
            break
        if time.monotonic() > deadline:
            raise FedUnlearnError(
                f"only {len(strategy.partition_of)} of {expected or '?'} partitions answered within "
                f"{wait_seconds:.0f} s; start the missing SuperNodes or lower their num-partitions"
            )
        time.sleep(0.5)
    log(INFO, "[HANDSHAKE] %d clients: partition ids %s", expected, sorted(strategy.partition_of.values()))


def _check_agreement(strategy: UnlearningFedAvg, counts: dict[int, int]) -> None:
    if len(set(counts.values())) > 1:
        raise FedUnlearnError(
            f"the nodes disagree on num-partitions ({sorted(set(counts.values()))}); give every SuperNode the same "
            "--node-config num-partitions"
        )
    pids = sorted(strategy.partition_of.values())
    if len(set(pids)) != len(pids):
        raise FedUnlearnError(
            f"two nodes claim the same partition id: {pids}; give each SuperNode its own partition-id"
        )


def poll_status(grid: Grid, state: ServerState, server_round: int) -> None:
    """Ask active nodes for pending deletion requests (before serving them)."""
    strategy = state.strategy
    config = ConfigRecord({protocol.SERVER_ROUND: server_round})
    messages = [
        strategy.build_message(n, protocol.QUERY_STATUS, arrays=None, config=config)
        for n in strategy.active_nodes(grid)
    ]
    strategy.note_status(grid.send_and_receive(messages, timeout=state.config.run.round_timeout))


def run_round(grid: Grid, state: ServerState, server_round: int) -> RoundRecord:
    """One FedAvg round: train, aggregate, client evaluation, server-side test evaluation."""
    start, strategy, timeout = time.perf_counter(), state.strategy, state.config.run.round_timeout
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
    trained = [m.content.metric_records[protocol.METRICS] for m in strategy.last_train_replies]
    everything = [*train_messages, *eval_messages]
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
        round_trips=1 + (1 if eval_messages else 0),
        bytes_down=sum(payload_bytes(m) for m in everything),
        bytes_up=sum(payload_bytes(m) for m in [*replies, *eval_replies]),
        client_steps=int(sum(_number(m.get(protocol.TRAIN_STEPS)) for m in trained)),
        client_examples=int(sum(_number(m.get(protocol.EXAMPLES)) for m in trained)),
    )
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


def client_records(strategy: UnlearningFedAvg, server_round: int) -> list[ClientRoundRecord]:
    """Per-client rows of a round: weight, loss, history bytes (for the storage report)."""
    rows = []
    for message in strategy.last_train_replies:
        node, metrics = message.metadata.src_node_id, message.content.metric_records[protocol.METRICS]
        pid = strategy.partition_of.get(node, -1)
        rows.append(
            ClientRoundRecord(
                partition_id=pid,
                num_examples=int(metrics[protocol.NUM_EXAMPLES]),  # type: ignore[arg-type]
                weight=strategy.round_weights[pid][server_round],
                train_loss=float(metrics[protocol.TRAIN_LOSS]),  # type: ignore[arg-type]
                history_bytes=int(metrics[protocol.HISTORY_BYTES]),  # type: ignore[arg-type]
                history_dense_bytes=int(metrics[protocol.HISTORY_DENSE_BYTES]),  # type: ignore[arg-type]
                history_round_bytes=int(metrics.get(protocol.HISTORY_ROUND_BYTES, 0)),  # type: ignore[arg-type]
            )
        )
    return sorted(rows, key=lambda r: r.partition_id)


def _number(value: object) -> float:
    """A metric value as a number (0 when absent or not a number)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _metric(record: object, key: str) -> float | None:
    if record is None:
        return None
    value = record.get(key)  # type: ignore[attr-defined]
    return float(value) if isinstance(value, (int, float)) else None
