"""The end of a phase: the server's accuracy check, then one exchange that verifies and commits.

The server first checks that test accuracy held (``unlearn.max-ta-drop``). It then applies
the candidate weights (write-ahead) and sends them with the commit: the forgetting client
judges them with its criterion and commits only if it holds. When it does not, the
request is not receipted as forgotten: the client keeps it pending with the failed checks
as its reason, and the server rolls the model back. A lost confirmation keeps the commit
for re-sending (the client answers a repeated commit with the receipt it already wrote),
so a request is never served twice. Controls (``none``, ``finetune``) commit unjudged.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn import protocol
from fedunlearn.aggregation import state_digest
from fedunlearn.deletion import DeletionReceipt
from server.phase.exchange import Exchange, PhaseAborted, PhaseStats, exchange
from server.phase.outcome import PhaseOutcome
from server.replies import EXPECT_COMMIT, EXPECT_VERIFY, metric
from server.state import ServerState, evaluate_global, save_model


def probe(grid: Grid, state: ServerState, node_id: int, request_id: str, stats: PhaseStats) -> dict[str, float]:
    """``evaluate.verify`` of the current weights: the criterion's figures (and RA when the
    client keeps data), without changing anything."""
    arrays, config = state.arrays, ConfigRecord({protocol.REQUEST_ID: request_id})
    reply = exchange(
        grid,
        state,
        Exchange(
            "probe",
            [node_id],
            lambda n: state.strategy.build_message(n, protocol.EVALUATE_VERIFY, arrays=arrays, config=config),
            required=True,
            expect=EXPECT_VERIFY,
        ),
        stats,
    )[node_id]
    return {k: metric(reply, k) for k in reply.content.metric_records[protocol.METRICS]}


def check_accuracy(
    state: ServerState, theta: dict[str, torch.Tensor], *, before: float | None = None, allowed: float | None = None
) -> dict[str, float]:
    """TA before (the phase's start, or now) and after; PhaseAborted (not transient) when it
    fell by more than ``allowed`` (default ``unlearn.max-ta-drop``)."""
    before = evaluate_global(state).accuracy if before is None else before
    allowed = state.config.unlearn.max_ta_drop if allowed is None else allowed
    after = evaluate_global(state, ArrayRecord(theta)).accuracy
    if after < before - allowed:
        raise PhaseAborted(
            f"test accuracy would fall from {before:.4f} to {after:.4f} (more than the allowed {allowed:.3f})"
        )
    return {"TA": after, "TA_before": before}


def apply_and_commit(
    grid: Grid,
    state: ServerState,
    *,
    requests: list[tuple[int, str]],
    server_round: int,
    theta: dict[str, torch.Tensor],
    metrics: dict[str, float],
    stats: PhaseStats,
    start: float,
    judge: bool = True,
    tentative: bool = False,
) -> list[PhaseOutcome]:
    """Apply ``theta`` and ask every requester, in one exchange, to commit its request if its
    criterion holds on it (``judge``). Requesters that commit are served; those whose
    criterion fails keep their request pending (``not_verified``); those that did not answer
    usably (no reply, or an error that may have come after the commit was written) have the
    commit kept for re-sending (``unconfirmed``): a committed deletion is never lost, and a
    node that keeps failing its commit sits out training until it confirms. When nobody committed or may
    still commit, the model is rolled back. A ``tentative`` commit is a check that commits
    when it can: a requester whose criterion fails records no failure (the phase goes on)."""
    before = state.arrays
    save_model(state, f"models/before-{requests[0][1]}.pt", before)
    state.arrays = ArrayRecord(theta)  # write-ahead: rolled back below unless a client commits
    commits = {
        node: commit_exchange(
            state,
            node,
            rid,
            _draft_receipt(state, rid, server_round, before, theta, metrics, stats, start),
            theta if judge else None,
            tentative=tentative,
        )
        for node, rid in requests
    }
    both = Exchange("commit", list(commits), lambda n: commits[n].build(n), required=False, expect=EXPECT_COMMIT)
    replies = exchange(grid, state, both, stats)
    outcomes = [
        _outcome(state, node, rid, replies.get(node), commits[node], metrics, stats, start) for node, rid in requests
    ]
    if not any(o.status in ("served", "unconfirmed") for o in outcomes):
        state.arrays = before
    return outcomes


def _outcome(
    state: ServerState,
    node: int,
    request_id: str,
    reply: Message | None,
    commit: Exchange,
    metrics: dict[str, float],
    stats: PhaseStats,
    start: float,
) -> PhaseOutcome:
    """One requester's result of the commit exchange."""
    pid, seconds = state.strategy.partition_of.get(node, -1), time.perf_counter() - start
    if reply is None:  # lost, or the handler failed (possibly after committing): never assume "not committed"
        state.awaiting_commit[request_id] = commit
        why = "the client's commit handler failed" if node in stats.refused else "no confirmation"
        log(WARNING, "[UNLEARN] request %s applied, %s; the commit is re-sent later", request_id, why)
        return PhaseOutcome(request_id, pid, "unconfirmed", why, seconds, stats, metrics)
    if metric(reply, protocol.VERIFIED) != 1:
        figures = {k: metric(reply, k) for k in reply.content.metric_records[protocol.METRICS]}
        shown = {k.removeprefix(protocol.CHECK_PREFIX): round(v, 4) for k, v in figures.items()}
        reason = "not verified: the client's criterion does not hold on the final weights " + json.dumps(shown)
        log(WARNING, "[UNLEARN] request %s %s; it stays pending", request_id, reason)
        return PhaseOutcome(request_id, pid, "not_verified", reason, seconds, stats, {**metrics, **figures})
    receipt = receipt_from(reply)
    if receipt.get("kind") == "client":
        state.strategy.depart(node)
    log(INFO, "[UNLEARN] request %s served with %s in %.1f s", request_id, state.config.unlearn.method, seconds)
    return PhaseOutcome(request_id, pid, "served", None, seconds, stats, metrics, receipt)


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
    """The server's part of the receipt; the client adds what only it knows (count, keyed ids hash)."""
    return DeletionReceipt(
        request_id=request_id,
        kind="",
        num_samples=0,
        ids_hmac="",
        model_digest_before=state_digest(before.to_torch_state_dict()),
        model_digest_after=state_digest(theta),
        server_round=server_round,
        method=state.config.unlearn.method,
        metrics=metrics,
        seconds=time.perf_counter() - start,
        messages=stats.messages + 2,
    )


def commit_exchange(
    state: ServerState,
    node_id: int,
    request_id: str,
    draft: DeletionReceipt,
    theta: dict[str, torch.Tensor] | None,
    *,
    tentative: bool = False,
) -> Exchange:
    """The ``query.commit`` round trip that ends a phase; with ``theta`` the client judges it first."""
    values = {protocol.REQUEST_ID: request_id, protocol.RECEIPT_JSON: json.dumps(draft.to_json())}
    config = ConfigRecord({**values, protocol.TENTATIVE: int(tentative)})
    arrays = ArrayRecord(theta) if theta is not None else None
    return Exchange(
        "commit",
        [node_id],
        lambda n: state.strategy.build_message(n, protocol.QUERY_COMMIT, arrays=arrays, config=config),
        required=True,
        expect=EXPECT_COMMIT,
    )


def receipt_from(reply: Message) -> dict[str, Any]:
    """The receipt a commit reply carries (the server's copy, checked by ``EXPECT_COMMIT``)."""
    receipt: dict[str, Any] = json.loads(str(reply.content.config_records[protocol.RECEIPT][protocol.RECEIPT_JSON]))
    return receipt
