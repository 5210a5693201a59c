"""Unlearning phases on the server: exchanges, the fast-slow loop, verification and commit.

``serve_pending`` serves every request the clients announced; a request is served by the
phase its method's traits call for (the fast-slow phase, or a server-side one such as
FedEraser's reconstruction).
"""

from server.phase.exchange import Exchange, PhaseAborted, PhaseStats, exchange
from server.phase.outcome import PhaseOutcome
from server.phase.serve import prepare_phases, serve_pending

__all__ = ["Exchange", "PhaseAborted", "PhaseOutcome", "PhaseStats", "exchange", "prepare_phases", "serve_pending"]
