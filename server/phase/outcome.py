"""What happened to one request in one phase (an event in results.json)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.phase.exchange import PhaseStats


@dataclass
class PhaseOutcome:
    """The result of serving one request.

    ``status``: "served", "deferred" (nothing applied; the request stays pending with the
    reason) or "unconfirmed" (applied, the client's commit acknowledgement missing).
    """

    request_id: str
    partition_id: int
    status: str
    reason: str | None
    seconds: float
    stats: PhaseStats
    metrics: dict[str, float] = field(default_factory=dict)
    receipt: dict[str, Any] | None = None
    model_before: str | None = None  # state_digest of the global model before / after the phase
    model_after: str | None = None
    method: str = ""
    transient: bool = False  # a deferral worth retrying unchanged (drop-out, time-out)
