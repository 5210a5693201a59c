"""One unlearning phase on the server: fast correction, slow remain corrections, verify, commit.

The server never sees data, ids or histories: it sends weights and instructions, and gets
back corrections (weight-sized arrays) and metrics. The global model is replaced only
after the phase verified; any failure before that (a client that stays away after the
retries, a non-finite correction, a failed verification) leaves the pre-phase weights in
place and the request pending on its client.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.aggregation import add_scaled, fast_slow_step, fedavg_weights, state_digest, weighted_sum
from fedunlearn.atomic import write_json_atomic
from fedunlearn.deletion import DeletionReceipt
from fedunlearn.errors import FedUnlearnError
from server.loop import ServerState, evaluate_global, save_model
from server.replies import (
    EXPECT_COMMIT,
    EXPECT_FISHER,
    EXPECT_FORGET,
    EXPECT_REMAIN,
    EXPECT_VERIFY,
    Expect,
    metric,
    reply_problem,
)
from server.strategy import UnlearningFedAvg


class PhaseAborted(FedUnlearnError):
    """The phase cannot finish; the global model keeps its pre-phase weights."""


@dataclass
class PhaseStats:
    """Messages and bytes exchanged in one phase (the cost reported next to RT's)."""

    messages: int = 0
    bytes: int = 0
    exchanges: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PhaseOutcome:
    """What happened to one request."""

    request_id: str
    partition_id: int
    status: str  # "served" | "deferred" | "unconfirmed" (applied, the client's commit ack missing)
    reason: str | None
    seconds: float
    stats: PhaseStats
    metrics: dict[str, float] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None
    model_before: str | None = None  # state_digest of the global model before / after the phase
    model_after: str | None = None


#: Failure reasons sent to clients are cut to this length.
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class Exchange:
    """One round trip: who gets which message, and what counts as a usable reply."""

    name: str
    nodes: list[int]
    build: Callable[[int], Message]
    required: bool  # a required exchange aborts the phase when every try fails
    expect: Expect = Expect()


def exchange(grid: Grid, state: ServerState, spec: Exchange, stats: PhaseStats) -> dict[int, Message]:
    """Send, then re-send to nodes that failed (error, timeout, invalid reply) up to
    ``phase_retries`` times; returns the valid replies by node."""
    replies: dict[int, Message] = {}
    problems: dict[int, str] = {}
    missing = list(spec.nodes)
    for attempt in range(state.config.phase_retries + 1):
        messages = [spec.build(n) for n in missing]
        stats.messages += len(messages)
        stats.bytes += sum(_payload_bytes(m) for m in messages)
        problems.update({n: "no reply (timeout or offline)" for n in missing})
        for reply in grid.send_and_receive(messages, timeout=state.config.round_timeout):
            stats.messages += 1
            stats.bytes += _payload_bytes(reply)
            node, problem = reply.metadata.src_node_id, reply_problem(reply, state, spec.expect)
            if problem:
                log(WARNING, "[UNLEARN] %s: node %d failed (%s)", spec.name, node, problem)
                problems[node] = problem
            elif node in missing:
                replies[node] = reply
        missing = [n for n in spec.nodes if n not in replies]
        if not missing:
            break
        log(WARNING, "[UNLEARN] %s: no usable reply from %d node(s) (try %d)", spec.name, len(missing), attempt + 1)
    stats.exchanges.append({"name": spec.name, "nodes": len(spec.nodes), "replied": len(replies)})
    if spec.required and missing:
        last = "; ".join(f"node {n}: {problems[n]}" for n in missing)
        raise PhaseAborted(f"{spec.name}: no usable reply after {state.config.phase_retries + 1} tries ({last})")
    return replies


def _payload_bytes(message: Message) -> int:
    if message.has_error():
        return 0
    return sum(record.count_bytes() for record in message.content.array_records.values())


def run_phase(grid: Grid, state: ServerState, *, node_id: int, request_id: str, server_round: int) -> PhaseOutcome:
    """Serve ``request_id`` of ``node_id``: I fast-slow outer steps, verification, commit."""
    strategy, config = state.strategy, state.config
    pid = strategy.partition_of.get(node_id, -1)
    start, stats = time.perf_counter(), PhaseStats()
    log(
        INFO,
        "[UNLEARN] client %d, request %s: method %s, %d outer step(s)",
        pid,
        request_id,
        config.unlearn.method,
        config.unlearn.outer_steps,
    )
    try:
        theta, steps_run = _fast_slow_loop(grid, state, node_id, request_id, stats)
        metrics = verify_phase(grid, state, node_id, request_id, theta, stats)
    except PhaseAborted as err:
        log(WARNING, "[UNLEARN] request %s deferred, global model rolled back: %s", request_id, err)
        return PhaseOutcome(request_id, pid, "deferred", str(err), time.perf_counter() - start, stats)
    return apply_and_commit(
        grid,
        state,
        node_id=node_id,
        request_id=request_id,
        server_round=server_round,
        theta=theta,
        metrics=metrics,
        steps_run=steps_run,
        stats=stats,
        start=start,
    )


def apply_and_commit(
    grid: Grid,
    state: ServerState,
    *,
    node_id: int,
    request_id: str,
    server_round: int,
    theta: dict[str, torch.Tensor],
    metrics: dict[str, float],
    steps_run: int,
    stats: PhaseStats,
    start: float,
) -> PhaseOutcome:
    """The common tail of every phase, once ``theta`` is verified: replace the global model,
    ask the client to commit (it completes the receipt), or keep the commit for re-sending."""
    strategy, before = state.strategy, state.arrays
    pid = strategy.partition_of.get(node_id, -1)
    save_model(state, f"models/before-{request_id}.pt", before)
    state.arrays = ArrayRecord(theta)  # verified: from here on the model has forgotten
    draft = _draft_receipt(state, request_id, server_round, before, theta, metrics, stats, start)
    commit = _commit_exchange(state, node_id, request_id, draft, steps_run)
    try:
        receipt = _receipt_from(exchange(grid, state, commit, stats)[node_id])
    except PhaseAborted as err:
        state.awaiting_commit[request_id] = commit
        log(
            WARNING,
            "[UNLEARN] request %s applied to the model but not confirmed by its client (%s); the commit "
            "is re-sent when the client announces the request again",
            request_id,
            err,
        )
        return PhaseOutcome(request_id, pid, "unconfirmed", str(err), time.perf_counter() - start, stats, metrics)
    if receipt.get("kind") == "client":
        strategy.departed.add(node_id)
    log(
        INFO,
        "[UNLEARN] request %s served with %s in %.1f s: %s",
        request_id,
        state.config.unlearn.method,
        time.perf_counter() - start,
        {k: round(v, 4) for k, v in metrics.items()},
    )
    return PhaseOutcome(request_id, pid, "served", None, time.perf_counter() - start, stats, metrics, receipt)


PhaseRunner = Callable[..., PhaseOutcome]
StateSetup = Callable[[ServerState], None]
_PHASE_RUNNERS: dict[str, tuple[PhaseRunner, StateSetup | None]] = {}


def register_phase_runner(method: str, *, setup: StateSetup | None = None) -> Callable[[PhaseRunner], PhaseRunner]:
    """Register a server-side phase for ``method`` (e.g. FedEraser, which works on the
    server's update log instead of a client correction); ``setup(state)`` runs before round 1
    (e.g. to add a round hook). Other methods use ``run_phase``."""

    def decorator(runner: PhaseRunner) -> PhaseRunner:
        _PHASE_RUNNERS[method] = (runner, setup)
        return runner

    return decorator


def phase_runner(method: str) -> PhaseRunner:
    """The phase that serves requests with ``method``: a registered one or the fast-slow phase."""
    return _PHASE_RUNNERS.get(method, (run_phase, None))[0]


def prepare_phases(state: ServerState) -> None:
    """Run the configured method's server-side setup, if it has one."""
    setup = _PHASE_RUNNERS.get(state.config.unlearn.method, (run_phase, None))[1]
    if setup is not None:
        setup(state)


def serve_pending(grid: Grid, state: ServerState, server_round: int) -> list[PhaseOutcome]:
    """Serve every request the clients announced, one phase each (oldest client first);
    re-send commits that were never confirmed instead of serving those twice (also when the
    client no longer announces the request: it committed, but its reply was lost); tell the
    client why a deferred request failed, so it keeps the reason with the pending request."""
    outcomes: list[PhaseOutcome] = []
    strategy = state.strategy
    still_pending: dict[int, list[str]] = {}
    for node_id in sorted(strategy.announced, key=lambda n: strategy.partition_of.get(n, -1)):
        if node_id in strategy.departed:
            continue
        for position, request_id in enumerate(strategy.announced[node_id]):
            if request_id in state.awaiting_commit:
                outcomes.append(_reconfirm(grid, state, node_id, request_id))
                continue
            outcome = _run_recorded(grid, state, node_id, request_id, server_round)
            outcomes.append(outcome)
            if outcome.status == "deferred":  # later requests of this client wait for the same fix
                _report_failure(grid, state, node_id, outcome, server_round)
                still_pending[node_id] = strategy.announced[node_id][position:]
                break
        if node_id not in still_pending:
            strategy.announced[node_id] = []  # served: no longer excluded from others' slow steps
    strategy.announced = still_pending
    online = set(strategy.active_nodes(grid))
    for request_id, commit in list(state.awaiting_commit.items()):
        if commit.nodes[0] in online and all(o.request_id != request_id for o in outcomes):
            outcomes.append(_reconfirm(grid, state, commit.nodes[0], request_id))
    strategy.held_back = {commit.nodes[0] for commit in state.awaiting_commit.values()}
    for outcome in outcomes:
        state.results.events.append({"type": "unlearning", "round": server_round, **dataclasses.asdict(outcome)})
        if outcome.receipt is not None and state.config.out_dir is not None:
            write_json_atomic(Path(state.config.out_dir) / "receipts" / f"{outcome.request_id}.json", outcome.receipt)
    return outcomes


def _run_recorded(grid: Grid, state: ServerState, node_id: int, request_id: str, server_round: int) -> PhaseOutcome:
    """Run the configured phase; the outcome records the global model's digest before and after."""
    before = state_digest(state.arrays.to_torch_state_dict())
    runner = phase_runner(state.config.unlearn.method)
    outcome = runner(grid, state, node_id=node_id, request_id=request_id, server_round=server_round)
    return dataclasses.replace(
        outcome, model_before=before, model_after=state_digest(state.arrays.to_torch_state_dict())
    )


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
        receipt = _receipt_from(exchange(grid, state, state.awaiting_commit[request_id], stats)[node_id])
    except PhaseAborted as err:
        return PhaseOutcome(request_id, pid, "unconfirmed", str(err), time.perf_counter() - start, stats)
    del state.awaiting_commit[request_id]
    if receipt.get("kind") == "client":
        state.strategy.departed.add(node_id)
    return PhaseOutcome(
        request_id,
        pid,
        "served",
        "confirmed late",
        time.perf_counter() - start,
        stats,
        receipt.get("metrics", {}),
        receipt,
    )


def _fast_slow_loop(
    grid: Grid, state: ServerState, node_id: int, request_id: str, stats: PhaseStats
) -> tuple[dict[str, torch.Tensor], int]:
    strategy, cfg = state.strategy, state.config.unlearn
    theta = dict(state.arrays.to_torch_state_dict())
    # Clients whose own deletions are still waiting must not reinforce that data in the slow steps.
    waiting = {n for n, ids in strategy.announced.items() if ids and n != node_id}
    remaining = [n for n in strategy.active_nodes(grid) if n != node_id and n not in waiting]
    fisher = _remain_fisher(grid, state, remaining, theta, stats) if _needs_fisher(state) else None
    steps_run = 0
    for step in range(cfg.outer_steps):
        forget_reply = exchange(
            grid,
            state,
            Exchange(
                f"fast {step + 1}/{cfg.outer_steps}",
                [node_id],
                functools.partial(
                    _forget_message, strategy, request_id=request_id, step=step, theta=theta, fisher=fisher
                ),
                required=True,
                expect=EXPECT_FORGET,
            ),
            stats,
        )[node_id]
        fa_before = metric(forget_reply, protocol.FA_BEFORE)
        if step > 0 and cfg.target_fa is not None and fa_before <= cfg.target_fa:
            log(INFO, "[UNLEARN] FA %.4f reached target %.4f after %d outer step(s)", fa_before, cfg.target_fa, step)
            break
        forget_delta = forget_reply.content.array_records[protocol.ARRAYS].to_torch_state_dict()
        theta_fast = add_scaled(theta, forget_delta, cfg.apply_scale)
        keeps_data = metric(forget_reply, protocol.NUM_RETAINED) > 0
        slow_nodes = (
            strategy.sample_remaining(remaining, step, include=node_id if keeps_data else None)
            if cfg.remain_steps > 0
            else []
        )
        remain_replies = exchange(
            grid,
            state,
            Exchange(
                f"slow {step + 1}/{cfg.outer_steps}",
                slow_nodes,
                functools.partial(
                    _remain_message,
                    strategy,
                    request_id=request_id,
                    step=step,
                    theta_fast=theta_fast,
                    forgetting=node_id,
                ),
                required=False,
                expect=EXPECT_REMAIN,
            ),
            stats,
        )
        usable = [(r, metric(r, protocol.NUM_EXAMPLES)) for r in remain_replies.values()]
        usable = [(r, w) for r, w in usable if w > 0]
        if cfg.remain_steps > 0 and slow_nodes and not usable:
            raise PhaseAborted(f"slow step {step + 1}: no remaining client answered")
        theta = fast_slow_step(
            theta,
            forget_reply.content.array_records[protocol.ARRAYS].to_torch_state_dict(),
            [r.content.array_records[protocol.ARRAYS].to_torch_state_dict() for r, _ in usable],
            [w for _, w in usable],
            apply_scale=cfg.apply_scale,
            alpha=cfg.alpha,
        )
        require_finite(theta, f"outer step {step + 1}")
        steps_run = step + 1
    return theta, steps_run


def _needs_fisher(state: ServerState) -> bool:
    cfg = state.config.unlearn
    return cfg.method == "sfr_on" and cfg.saliency == "fisher"


def _remain_fisher(
    grid: Grid, state: ServerState, nodes: list[int], theta: dict[str, torch.Tensor], stats: PhaseStats
) -> ArrayRecord | None:
    """Remaining clients' diagonal Fisher, averaged by their sample counts (F_r of the mask)."""
    strategy = state.strategy
    replies = exchange(
        grid,
        state,
        Exchange(
            "fisher",
            nodes,
            lambda n: strategy.build_message(
                n, protocol.QUERY_FISHER, arrays=ArrayRecord(theta), config=ConfigRecord()
            ),
            required=False,
            expect=EXPECT_FISHER,
        ),
        stats,
    )
    if not replies:
        raise PhaseAborted("no remaining client sent its Fisher diagonal")
    fishers = [r.content.array_records[protocol.ARRAYS].to_torch_state_dict() for r in replies.values()]
    counts = [metric(r, protocol.NUM_EXAMPLES) for r in replies.values()]
    return ArrayRecord(weighted_sum(fishers, fedavg_weights(counts)))


def _forget_message(
    strategy: UnlearningFedAvg,
    node: int,
    *,
    request_id: str,
    step: int,
    theta: dict[str, torch.Tensor],
    fisher: ArrayRecord | None,
) -> Message:
    config = ConfigRecord({protocol.REQUEST_ID: request_id, protocol.STEP: step})
    message = strategy.build_message(node, protocol.TRAIN_FORGET, arrays=ArrayRecord(theta), config=config)
    if fisher is not None:
        message.content[protocol.REMAIN_FISHER] = fisher
    return message


def _remain_message(
    strategy: UnlearningFedAvg,
    node: int,
    *,
    request_id: str,
    step: int,
    theta_fast: dict[str, torch.Tensor],
    forgetting: int,
) -> Message:
    cfg = strategy.config.unlearn
    values: dict[str, Any] = {
        protocol.REMAIN_STEPS: cfg.remain_steps,
        protocol.STEP: step,
        protocol.SEED: strategy.config.seed * 7919 + step * 101 + strategy.partition_of.get(node, 0),
    }
    if node == forgetting:  # the forgetting client corrects on its retained data, without D_f
        values[protocol.EXCLUDE_REQUEST] = request_id
    return strategy.build_message(
        node, protocol.TRAIN_REMAIN, arrays=ArrayRecord(theta_fast), config=ConfigRecord(values)
    )


def require_finite(theta: dict[str, torch.Tensor], where: str) -> None:
    """Abort the phase (nothing applied) if any weight is NaN/Inf."""
    bad = [k for k, v in theta.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PhaseAborted(f"{where}: non-finite weights in {bad[:5]}")


def verify_phase(
    grid: Grid, state: ServerState, node_id: int, request_id: str, theta: dict[str, torch.Tensor], stats: PhaseStats
) -> dict[str, float]:
    """FA/MIA/RA from the forgetting client, TA (and backdoor ASR) on the server; fails the
    phase if TA fell by more than ``max_ta_drop``."""
    strategy = state.strategy
    reply = exchange(
        grid,
        state,
        Exchange(
            "verify",
            [node_id],
            lambda n: strategy.build_message(
                n,
                protocol.EVALUATE_VERIFY,
                arrays=ArrayRecord(theta),
                config=ConfigRecord({protocol.REQUEST_ID: request_id}),
            ),
            required=True,
            expect=EXPECT_VERIFY,
        ),
        stats,
    )[node_id]
    keys = [k for k in reply.content.metric_records[protocol.METRICS] if k != protocol.NUM_EXAMPLES]
    metrics = {k: metric(reply, k) for k in keys}
    ta_before = evaluate_global(state).accuracy
    after = evaluate_global(state, ArrayRecord(theta))
    metrics.update(TA=after.accuracy, TA_before=ta_before)
    if after.accuracy < ta_before - state.config.unlearn.max_ta_drop:
        raise PhaseAborted(
            f"verification failed: test accuracy fell from {ta_before:.4f} to {after.accuracy:.4f} "
            f"(more than max_ta_drop={state.config.unlearn.max_ta_drop})"
        )
    return metrics


def _draft_receipt(
    state: ServerState,
    request_id: str,
    server_round: int,
    before: ArrayRecord,
    theta: dict[str, torch.Tensor],
    metrics: dict[str, float],
    stats: PhaseStats,
    start: float,
) -> DeletionReceipt:
    """The server's part of the receipt; the client adds the sample count and ids digest."""
    return DeletionReceipt(
        request_id=request_id,
        kind="",
        num_samples=0,
        ids_sha256="",
        model_digest_before=state_digest(before.to_torch_state_dict()),
        model_digest_after=state_digest(theta),
        server_round=server_round,
        method=state.config.unlearn.method,
        metrics=metrics,
        seconds=time.perf_counter() - start,
        messages=stats.messages + 2,
    )


def _commit_exchange(
    state: ServerState, node_id: int, request_id: str, draft: DeletionReceipt, steps_run: int
) -> Exchange:
    config = ConfigRecord(
        {
            protocol.REQUEST_ID: request_id,
            protocol.RECEIPT_JSON: json.dumps(draft.to_json()),
            protocol.OUTER_STEPS: steps_run,
        }
    )
    return Exchange(
        "commit",
        [node_id],
        lambda n: state.strategy.build_message(n, protocol.QUERY_COMMIT, arrays=None, config=config),
        required=True,
        expect=EXPECT_COMMIT,
    )


def _receipt_from(reply: Message) -> dict[str, Any]:
    receipt: dict[str, Any] = json.loads(str(reply.content.config_records[protocol.RECEIPT][protocol.RECEIPT_JSON]))
    return receipt
