"""Serving the requests clients announced: one phase per request, chosen by the method's traits.

A request whose phase fails with a transient fault (a drop-out, a time-out) stays pending
and is served again after a later round. A failure that would repeat unchanged (the client
refused the request, verification failed) is not retried in this run: its reason is sent
to the owning node, which keeps the request pending with that reason visible to its data
officer (``fedunlearn receipts``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

from flwr.app import ConfigRecord
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.aggregation import state_digest
from fedunlearn.atomic import write_json_atomic
from fedunlearn.errors import HistoryError, UnlearningError
from fedunlearn.unlearning import get_method, method_settings
from server.phase.commit import apply_and_commit, check_accuracy, receipt_from
from server.phase.exchange import Exchange, PhaseAborted, PhaseStats, exchange
from server.phase.fast_slow import LoopResult, PhaseLoop
from server.phase.outcome import PhaseOutcome
from server.replies import Expect, metric
from server.state import ServerState

#: Failure reasons sent to clients are cut to this length.
MAX_REASON_CHARS = 1000

PhaseRunner = Callable[..., PhaseOutcome]
StateSetup = Callable[[ServerState], None]
_SERVER_PHASES: dict[str, tuple[PhaseRunner, StateSetup | None]] = {}


def register_server_phase(method: str, *, setup: StateSetup | None = None) -> Callable[[PhaseRunner], PhaseRunner]:
    """Register the server-side phase of a method whose traits say ``server_phase`` (FedEraser);
    ``setup(state)`` runs before round 1 (e.g. to add a round hook)."""

    def decorator(runner: PhaseRunner) -> PhaseRunner:
        _SERVER_PHASES[method] = (runner, setup)
        return runner

    return decorator


def phase_runner(method: str) -> PhaseRunner:
    """The server-side phase of ``method`` (its traits say ``server_phase``)."""
    if method not in _SERVER_PHASES:
        raise UnlearningError(f"method {method!r} needs a server-side phase, and none is registered for it")
    return _SERVER_PHASES[method][0]


def prepare_phases(state: ServerState, methods: list[str]) -> None:
    """Run the setup of every server-side phase among ``methods`` (before round 1)."""
    for method in methods:
        if get_method(method).traits.server_phase and method in _SERVER_PHASES:
            setup = _SERVER_PHASES[method][1]
            if setup is not None:
                setup(state)


def run_phase(
    grid: Grid, state: ServerState, *, requests: list[tuple[int, str]], server_round: int
) -> list[PhaseOutcome]:
    """Serve ``requests`` (one per requesting node) in one phase: the verified fast-slow loop,
    the accuracy check, and commit exchanges in which each requester commits only if its
    criterion holds on the weights sent. A method that strengthens by rescaling tries a
    tentative commit after each step (the commit doubles as the check); a requester whose
    criterion still fails stays in the loop, and only the last commit records a failure."""
    start, stats = time.perf_counter(), PhaseStats()
    spec, settings = get_method(state.config.unlearn.method), method_settings(state.config.unlearn)
    pids = [state.strategy.partition_of.get(node, -1) for node, _ in requests]
    log(
        INFO,
        "[UNLEARN] clients %s, %d request(s): %s, up to %d outer step(s)",
        pids,
        len(requests),
        spec.name,
        settings.outer_steps,
    )
    settled: dict[str, PhaseOutcome] = {}
    try:
        phase = PhaseLoop(grid, state, requests, stats)
        while phase.loop.requests:
            result = phase.advance()
            final = phase.finished or result.all_passed or not phase.optimistic
            checked = check_accuracy(state, result.theta, before=phase.ta_before, allowed=phase.allowed_drop)
            metrics = {**checked, **_loop_metrics(result, spec, len(requests))}
            outcomes = apply_and_commit(
                grid,
                state,
                requests=phase.loop.requests,
                server_round=server_round,
                theta=result.theta,
                metrics=metrics,
                stats=stats,
                start=start,
                judge=not spec.traits.control,
                tentative=not final,
            )
            done = {o.request_id: o for o in outcomes if final or o.status != "not_verified"}
            settled.update(done)
            phase.drop({node for node, rid in phase.loop.requests if rid in done})
            phase.judged({node: False for node, _ in phase.loop.requests})
    except PhaseAborted as err:
        log(WARNING, "[UNLEARN] request(s) deferred, global model unchanged: %s", err)
        seconds = time.perf_counter() - start
        for node, rid in requests:
            if rid not in settled:
                pid = state.strategy.partition_of.get(node, -1)
                settled[rid] = PhaseOutcome(rid, pid, "deferred", str(err), seconds, stats, transient=err.transient)
    return [settled[rid] for _, rid in requests]


def _loop_metrics(result: LoopResult, spec: Any, batch: int) -> dict[str, float]:
    return {
        "outer_steps": float(result.steps_run),
        "client_steps": float(result.client_steps),
        "client_examples": float(result.client_examples),
        "backoffs": float(result.backoffs),
        "no_trace": float(result.no_trace),
        "control": float(spec.traits.control),
        "batch": float(batch),
    }


def serve_pending(grid: Grid, state: ServerState, server_round: int) -> list[PhaseOutcome]:
    """Serve the requests the clients announced: the oldest of each client together in one
    phase (a method with a server-side phase serves them one at a time), then the next
    ones, until every client's queue is served or its head request failed.

    Commits that were never confirmed are re-sent instead of serving those twice (also when
    the client no longer announces the request: it committed, but its reply was lost).
    """
    outcomes: list[PhaseOutcome] = []
    strategy = state.strategy
    queues = {
        node: [rid for rid in ids if rid not in strategy.escalated]
        for node, ids in sorted(strategy.announced.items(), key=lambda item: strategy.partition_of.get(item[0], -1))
        if node not in strategy.departed
    }
    for node, ids in queues.items():
        for rid in [r for r in ids if r in state.awaiting_commit]:
            outcomes.append(_reconfirm(grid, state, node, rid))
            ids.remove(rid)
    blocked: set[int] = set()
    while batch := [(node, ids[0]) for node, ids in queues.items() if ids and node not in blocked]:
        for done in _serve_batch(grid, state, batch, server_round):
            outcomes.append(done)
            node = next(n for n, rid in batch if rid == done.request_id)
            queues[node].remove(done.request_id)
            if done.status in ("deferred", "not_verified"):  # later requests of this client wait too
                blocked.add(node)
                if not done.transient:
                    strategy.escalated[done.request_id] = done.reason or "unknown"
                if done.status == "deferred" and not done.transient:  # (not_verified: the client recorded it)
                    _report_failure(grid, state, node, done, server_round)
    served = {o.request_id for o in outcomes if o.status in ("served", "unconfirmed")}
    strategy.announced = {
        node: left for node, ids in strategy.announced.items() if (left := [r for r in ids if r not in served])
    }
    online = set(strategy.active_nodes(grid))
    for request_id, commit in list(state.awaiting_commit.items()):
        if commit.nodes[0] in online and all(o.request_id != request_id for o in outcomes):
            outcomes.append(_reconfirm(grid, state, commit.nodes[0], request_id))
    strategy.held_back = {commit.nodes[0] for commit in state.awaiting_commit.values()}
    _record(state, outcomes, server_round)
    return outcomes


def _serve_batch(grid: Grid, state: ServerState, batch: list[tuple[int, str]], server_round: int) -> list[PhaseOutcome]:
    """One phase for ``batch`` (a server-side phase: one request at a time)."""
    method = state.config.unlearn.method
    if get_method(method).traits.server_phase:
        return [_run_recorded(grid, state, [request], server_round)[0] for request in batch]
    return _run_recorded(grid, state, batch, server_round)


def _record(state: ServerState, outcomes: list[PhaseOutcome], server_round: int) -> None:
    for outcome in outcomes:
        state.results.events.append({"type": "unlearning", "round": server_round, **dataclasses.asdict(outcome)})
        if outcome.receipt is not None:
            write_json_atomic(state.out_dir / "receipts" / f"{outcome.request_id}.json", outcome.receipt)


def _run_recorded(
    grid: Grid, state: ServerState, requests: list[tuple[int, str]], server_round: int
) -> list[PhaseOutcome]:
    """Run the method's phase; the outcomes record the global model's digest before and after."""
    before = state_digest(state.arrays.to_torch_state_dict())
    method = state.config.unlearn.method
    try:
        if get_method(method).traits.server_phase:
            ((node, rid),) = requests
            outcomes = [phase_runner(method)(grid, state, node_id=node, request_id=rid, server_round=server_round)]
        else:
            outcomes = run_phase(grid, state, requests=requests, server_round=server_round)
    except (UnlearningError, HistoryError) as err:  # the server cannot serve it this way; nothing applied
        outcomes = [
            PhaseOutcome(rid, state.strategy.partition_of.get(node, -1), "deferred", str(err), 0.0, PhaseStats())
            for node, rid in requests
        ]
    after = state_digest(state.arrays.to_torch_state_dict())
    return [dataclasses.replace(o, model_before=before, model_after=after, method=method) for o in outcomes]


def _report_failure(grid: Grid, state: ServerState, node_id: int, outcome: PhaseOutcome, server_round: int) -> None:
    """Best effort: ``query.commit`` with outcome "failed" and the reason; the client keeps the
    request pending and records the reason (``DeletionQueue.record_failure``)."""
    reason = (outcome.reason or "unknown")[:MAX_REASON_CHARS]
    config = ConfigRecord(
        {
            protocol.REQUEST_ID: outcome.request_id,
            protocol.OUTCOME: protocol.OUTCOME_FAILED,
            protocol.REASON: f"round {server_round}: {reason}",
        }
    )
    notice = Exchange(
        "report failure",
        [node_id],
        lambda n: state.strategy.build_message(n, protocol.QUERY_COMMIT, arrays=None, config=config),
        required=False,
        expect=Expect(None, (protocol.ATTEMPTS,)),
    )
    if not exchange(grid, state, notice, outcome.stats):
        log(WARNING, "[UNLEARN] could not tell node %d why request %s failed", node_id, outcome.request_id)


def _reconfirm(grid: Grid, state: ServerState, node_id: int, request_id: str) -> PhaseOutcome:
    stats, start = PhaseStats(), time.perf_counter()
    pid = state.strategy.partition_of.get(node_id, -1)
    try:
        reply = exchange(grid, state, state.awaiting_commit[request_id], stats)[node_id]
    except PhaseAborted as err:
        return PhaseOutcome(request_id, pid, "unconfirmed", str(err), time.perf_counter() - start, stats)
    del state.awaiting_commit[request_id]
    if metric(reply, protocol.VERIFIED) != 1:  # the first commit never arrived, and the check now fails
        reason = "not verified when the commit was re-sent; the weights stay (rounds were trained on them)"
        log(WARNING, "[UNLEARN] request %s: %s", request_id, reason)
        return PhaseOutcome(request_id, pid, "not_verified", reason, time.perf_counter() - start, stats)
    receipt = receipt_from(reply)
    if receipt.get("kind") == "client":
        state.strategy.depart(node_id)
    metrics = receipt.get("metrics", {})
    return PhaseOutcome(
        request_id, pid, "served", "confirmed late", time.perf_counter() - start, stats, metrics, receipt
    )
