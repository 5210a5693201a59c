"""FedEraser on the Flower server: the update-log round hook and the reconstruction phase.

The math and the on-disk log are ``fedunlearn.federaser`` (Liu et al. 2021); this module only
moves weights. Registered as the phase of method ``federaser``:

- setup (before round 1): adds a round hook that keeps every retained round's client updates
  ``U_k^r = w_k^r - M^r`` and ``M^r`` under ``<state_root>/server/federaser/``, and reports the
  bytes as ``federaser-log`` events (the storage FedEraser pays on the server). Nothing is
  kept in retrain mode (RT unlearns nothing).
- phase: FedEraser removes whole clients only. The server cannot see a request's kind, so it
  first asks the forgetting client to ``evaluate.verify`` the current weights: a client-level
  request leaves the client no retained data, so the reply has no RA. With RA the request is
  sample- or class-level and is deferred (it stays pending and visible in the events). Else
  the model is rebuilt from the initial one: each retained round's remaining clients run
  ``train.remain`` from the rebuilt model for ``E_cali`` steps, the server calibrates the stored
  updates with them and adds their FedAvg. Then verify and commit as ``run_phase`` does; the
  forgotten client's stored updates are deleted once the rebuilt model is in place.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.errors import HistoryError, UnlearningError
from fedunlearn.federaser import (
    Reconstruction,
    UpdateLog,
    calibration_steps,
    client_update,
    is_retained_round,
    reconstruct,
)
from fedunlearn.types import Delta, StateDict
from fedunlearn.unlearning import method_settings
from server.phase.commit import apply_and_commit, check_accuracy
from server.phase.exchange import Exchange, PhaseAborted, PhaseStats, exchange
from server.phase.fast_slow import require_finite
from server.phase.outcome import PhaseOutcome
from server.phase.serve import register_server_phase
from server.replies import metric
from server.state import ServerState

METHOD = "federaser"


def update_log(state: ServerState) -> UpdateLog:
    """Return the run's FedEraser log, ``<state_root>/server/federaser/`` (the disk is its only state)."""
    return UpdateLog(state.server_dir / METHOD)


def attach_update_log(state: ServerState) -> None:
    """Keep every retained round in the log (a fresh run starts an empty one; a resumed run goes on)."""
    store = update_log(state)
    if state.next_round == 1 and store.root.exists():  # round 1 restarts from the initial model: stale log
        log(WARNING, "[FEDERASER] removing the update log of an earlier run at %s", store.root)
        store.clear()
    state.round_hooks.append(record_round)


def record_round(state: ServerState, server_round: int, global_before: ArrayRecord) -> None:
    """Round hook: store ``M^r`` and each valid reply's ``U_k^r`` (streamed, one client at a time)."""
    if not is_retained_round(server_round, interval=method_settings(state.config.unlearn, METHOD).interval):
        return
    start, strategy = time.perf_counter(), state.strategy
    before = global_before.to_torch_state_dict()
    updates = (
        (
            strategy.partition_of[m.metadata.src_node_id],
            int(m.content.metric_records[protocol.METRICS][protocol.NUM_EXAMPLES]),  # type: ignore[arg-type]
            client_update(m.content.array_records[protocol.ARRAYS].to_torch_state_dict(), before),
        )
        for m in strategy.last_train_replies
    )
    store = update_log(state)
    entry = store.write_round(server_round, global_state=before, updates=updates)
    total = store.disk_bytes()
    state.results.events.append(
        {
            "type": "federaser-log",
            "round": server_round,
            "clients": sorted(entry.clients),
            "bytes": entry.bytes,
            "total_bytes": total,
            "seconds": time.perf_counter() - start,
        }
    )
    log(
        INFO,
        "[FEDERASER] round %d: kept %d client update(s), %d bytes (log: %d bytes)",
        server_round,
        len(entry.clients),
        entry.bytes,
        total,
    )


@register_server_phase(METHOD, setup=attach_update_log)
def run_federaser_phase(
    grid: Grid, state: ServerState, *, node_id: int, request_id: str, server_round: int
) -> PhaseOutcome:
    """Serve a client-level request by reconstruction (defer any other kind), verify, commit."""
    pid = state.strategy.partition_of.get(node_id, -1)
    start, stats = time.perf_counter(), PhaseStats()
    log(INFO, "[UNLEARN] client %d, request %s: FedEraser reconstruction", pid, request_id)
    try:
        not_client_level = _probe_kind(grid, state, node_id, request_id, stats)
        if not_client_level is not None:
            log(WARNING, "[UNLEARN] request %s deferred: %s", request_id, not_client_level)
            return PhaseOutcome(request_id, pid, "deferred", not_client_level, time.perf_counter() - start, stats)
        log_bytes = update_log(state).disk_bytes()
        rebuilt, steps = _reconstruct(grid, state, node_id, stats)
        require_finite(rebuilt.state, "FedEraser reconstruction")
        metrics = check_accuracy(state, rebuilt.state)
    except (PhaseAborted, UnlearningError, HistoryError) as err:
        log(WARNING, "[UNLEARN] request %s deferred, global model unchanged: %s", request_id, err)
        return PhaseOutcome(request_id, pid, "deferred", str(err), time.perf_counter() - start, stats)
    metrics.update(
        log_bytes=float(log_bytes),
        log_rounds=float(len(rebuilt.rounds)),
        calibrated_rounds=float(len(rebuilt.calibrated)),
        calibration_steps=float(steps),
    )
    return _apply_and_commit(grid, state, node_id, request_id, server_round, rebuilt, metrics, stats, start)


def _probe_kind(grid: Grid, state: ServerState, node_id: int, request_id: str, stats: PhaseStats) -> str | None:
    """Why the request is not client-level (the client reports RA on data it keeps), or None."""
    arrays, config = state.arrays, ConfigRecord({protocol.REQUEST_ID: request_id})
    reply = exchange(
        grid,
        state,
        Exchange(
            "probe",
            [node_id],
            lambda n: state.strategy.build_message(n, protocol.EVALUATE_VERIFY, arrays=arrays, config=config),
            required=True,
        ),
        stats,
    )[node_id]
    if protocol.RA in reply.content.metric_records[protocol.METRICS]:
        return (
            "FedEraser removes whole clients; this request leaves the client retained data (a sample- or "
            "class-level deletion): use another method for sample/class deletion"
        )
    return None


def _reconstruct(grid: Grid, state: ServerState, node_id: int, stats: PhaseStats) -> tuple[Reconstruction, int]:
    """Rebuild without the forgetting client and clients that left earlier.

    Also returns the calibration steps the answering clients ran in total.
    """
    strategy, train = state.strategy, state.config.train
    node_of = {p: n for n, p in strategy.partition_of.items()}
    excluded = {strategy.partition_of[node_id], *strategy.departed_partitions}
    ratio = method_settings(state.config.unlearn, METHOD).calibration_ratio
    store = update_log(state)
    counts = {e.round: e.num_examples for e in store.rounds()}
    total_steps = 0

    def calibrate_round(server_round: int, theta: StateDict, pids: list[int]) -> dict[int, Delta]:
        nonlocal total_steps
        online = set(strategy.active_nodes(grid))
        nodes = [node_of[p] for p in pids if node_of.get(p) in online]
        steps = {
            node_of[p]: calibration_steps(
                num_examples=counts[server_round][p],
                batch_size=train.batch_size,
                local_epochs=train.local_epochs,
                ratio=ratio,
            )
            for p in pids
            if p in node_of
        }
        arrays = ArrayRecord(theta)
        replies = exchange(
            grid,
            state,
            Exchange(
                f"calibrate round {server_round}",
                nodes,
                lambda n: _calibration_message(state, n, arrays, steps[n], server_round),
                required=False,
            ),
            stats,
        )
        usable = {strategy.partition_of[n]: r for n, r in replies.items() if metric(r, protocol.NUM_EXAMPLES) > 0}
        if not usable:
            raise PhaseAborted(f"calibration of round {server_round}: no remaining client answered")
        total_steps += sum(steps[node_of[p]] for p in usable)
        return {p: dict(r.content.array_records[protocol.ARRAYS].to_torch_state_dict()) for p, r in usable.items()}

    rebuilt = reconstruct(store, excluded=excluded, calibrate_round=calibrate_round)
    log(
        INFO,
        "[UNLEARN] FedEraser rebuilt the model from %d retained round(s) (%d calibrated) without client(s) %s",
        len(rebuilt.rounds),
        len(rebuilt.calibrated),
        sorted(excluded),
    )
    return rebuilt, total_steps


def _calibration_message(state: ServerState, node: int, arrays: ArrayRecord, steps: int, server_round: int) -> Message:
    """``train.remain``: ``steps`` local CE steps from the rebuilt model (FedEraser's calibration training)."""
    pid = state.strategy.partition_of.get(node, 0)
    config = ConfigRecord(
        {
            protocol.REMAIN_STEPS: steps,
            protocol.STEP: server_round,
            protocol.SEED: state.config.seed * 7919 + server_round * 101 + pid,
        }
    )
    return state.strategy.build_message(node, protocol.TRAIN_REMAIN, arrays=arrays, config=config)


def _apply_and_commit(
    grid: Grid,
    state: ServerState,
    node_id: int,
    request_id: str,
    server_round: int,
    rebuilt: Reconstruction,
    metrics: dict[str, float],
    stats: PhaseStats,
    start: float,
) -> PhaseOutcome:
    """The common tail; once the client committed, drop its stored updates (they come from its data)."""
    metrics["outer_steps"] = float(len(rebuilt.rounds))
    (outcome,) = apply_and_commit(
        grid,
        state,
        requests=[(node_id, request_id)],
        server_round=server_round,
        theta=rebuilt.state,
        metrics=metrics,
        stats=stats,
        start=start,
    )
    if outcome.status in ("served", "unconfirmed"):
        outcome.metrics["log_bytes_freed"] = float(
            update_log(state).remove_client(state.strategy.partition_of.get(node_id, -1))
        )
    return outcome
