"""One round trip of a phase: send, check every reply, re-send to clients that dropped out.

A reply the server cannot use (an error, a missing record, wrong shapes, NaN/Inf; see
``server.replies``) counts as missing. Missing replies are re-sent up to ``run.retries``
times: drop-outs, time-outs and crashed ClientApps are transient. A client whose handler
answered with an error (a fedunlearn error: the request cannot be served as asked; or an
unexpected exception in the handler) is not asked again: the same question would get the
same answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

from flwr.app import Message
from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn.errors import FedUnlearnError
from server.replies import Expect, reply_problem
from server.state import ServerState

#: Flower error codes the ClientApp's handlers answer with (``clients.common``): a fedunlearn
#: error, or an unexpected exception caught in the handler. Both repeat if asked again.
CLIENT_REFUSED_CODES = frozenset({100, 101})


class PhaseAborted(FedUnlearnError):
    """The phase cannot finish; the global model keeps its pre-phase weights.

    ``transient``: a drop-out or time-out (worth serving again later); otherwise the
    failure will repeat as long as nothing changes (it is reported to the request's owner).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass
class PhaseStats:
    """Messages, bytes and round trips of one phase (the cost reported next to RT's).

    Requests served together share one PhaseStats; ``phase_id`` tells their events apart
    from another phase's, so the phase's cost is counted once.
    """

    phase_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    messages: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    round_trips: int = 0
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # nodes whose handler answered with an error

    @property
    def bytes(self) -> int:
        """Bytes of arrays sent both ways."""
        return self.bytes_down + self.bytes_up


@dataclass(frozen=True)
class Exchange:
    """One round trip: who gets which message, and what counts as a usable reply (one
    ``Expect`` for all, or one per node when the nodes get different kinds of message)."""

    name: str
    nodes: list[int]
    build: Callable[[int], Message]
    required: bool  # a required exchange aborts the phase when every try fails
    expect: Expect | Callable[[int], Expect] = Expect()

    def expected(self, node: int) -> Expect:
        """What node ``node``'s reply must carry."""
        return self.expect(node) if callable(self.expect) else self.expect


def exchange(grid: Grid, state: ServerState, spec: Exchange, stats: PhaseStats) -> dict[int, Message]:
    """Send, then re-send to nodes whose reply was missing or unusable, up to ``run.retries``
    times (never to a node that refused); returns the usable replies by node."""
    replies: dict[int, Message] = {}
    problems: dict[int, str] = {}
    refused: set[int] = set()
    missing = list(spec.nodes)
    for attempt in range(state.config.run.retries + 1):
        messages = [spec.build(n) for n in missing]
        stats.messages += len(messages)
        stats.round_trips += 1 if messages else 0
        stats.bytes_down += sum(payload_bytes(m) for m in messages)
        problems.update({n: "no reply (timeout or offline)" for n in missing})
        for reply in grid.send_and_receive(messages, timeout=state.config.run.round_timeout):
            stats.messages += 1
            stats.bytes_up += payload_bytes(reply)
            node = reply.metadata.src_node_id
            problem = reply_problem(reply, state, spec.expected(node))
            if problem:
                log(WARNING, "[UNLEARN] %s: node %d failed (%s)", spec.name, node, problem)
                problems[node] = problem
                if reply.has_error() and reply.error.code in CLIENT_REFUSED_CODES:
                    refused.add(node)
            elif node in missing:
                replies[node] = reply
        missing = [n for n in spec.nodes if n not in replies and n not in refused]
        if not missing:
            break
        log(WARNING, "[UNLEARN] %s: no usable reply from %d node(s) (try %d)", spec.name, len(missing), attempt + 1)
    stats.exchanges.append({"name": spec.name, "nodes": len(spec.nodes), "replied": len(replies)})
    stats.refused += sorted(refused - set(stats.refused))
    failed = [n for n in spec.nodes if n not in replies]
    if spec.required and failed:
        last = "; ".join(f"node {n}: {problems[n]}" for n in failed)
        transient = not any(n in refused for n in failed)
        raise PhaseAborted(f"{spec.name}: no usable reply ({last})", transient=transient)
    return replies


def payload_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries (the model-sized part of its size)."""
    if message.has_error():
        return 0
    return sum(record.count_bytes() for record in message.content.array_records.values())
