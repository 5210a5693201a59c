"""The one engine every way of running fedunlearn drives: rounds, requests, checkpoints, results.

``flwr run`` (simulation or deployment), ``fedunlearn simulate`` and ``fedunlearn bench``
all run ``run_engine`` inside a ServerApp: the same handshake, FedAvg rounds, unlearning
phases and results. A run starts at round 1 from the seeded initial model, or with
``run.resume`` continues the run whose checkpoint is under ``run.state-root``. Requests a
client announces during round r are served after round r; requests filed before the run
(or while it was stopped) are served before its first round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO
from typing import Any

from flwr.common import log
from flwr.serverapp import Grid

from fedunlearn.config import FederationConfig
from fedunlearn.errors import FedUnlearnError
from fedunlearn.results import RoundRecord
from fedunlearn.unlearning import available_methods, get_method
from server.checkpoint import restore_checkpoint, save_checkpoint
from server.phase import prepare_phases, serve_pending
from server.rounds import discover_nodes, poll_status, run_round
from server.state import ServerState, initial_state, save_outputs


class RunStopped(FedUnlearnError):
    """The run was asked to stop (e.g. Ctrl-C); everything up to the last checkpoint is kept."""


@dataclass(frozen=True)
class EngineHooks:
    """What a caller may watch or steer: a callback after each round, and a stop request
    asked between rounds and phases (True: stop cleanly after the last checkpoint)."""

    on_round: Callable[[RoundRecord], None] | None = None
    should_stop: Callable[[], bool] | None = None


def run_engine(
    grid: Grid, config: FederationConfig, *, flat_config: dict[str, Any], hooks: EngineHooks | None = None
) -> ServerState:
    """Run the federation ``config`` describes on ``grid``; return the final server state."""
    hooks = hooks or EngineHooks()
    state = initial_state(config, flat_config=flat_config)
    if config.run.resume:
        done = restore_checkpoint(state)
        log(INFO, "[RESUME] continuing lineage %s after round %d", state.lineage, done)
    prepare_phases(state, server_logged_methods(config))
    discover_nodes(grid, state, wait_seconds=config.run.round_timeout)
    _serve(grid, state, state.next_round - 1, hooks)  # requests filed before this run began
    for server_round in range(state.next_round, config.train.rounds + 1):
        _check_stop(hooks)
        record = run_round(grid, state, server_round)
        serve_pending(grid, state, server_round)
        save_checkpoint(state, server_round)
        if hooks.on_round is not None:
            hooks.on_round(record)
    _serve(grid, state, max(config.train.rounds, state.next_round - 1), hooks)  # filed during the last round
    save_outputs(state)
    return state


def _serve(grid: Grid, state: ServerState, after_round: int, hooks: EngineHooks) -> None:
    _check_stop(hooks)
    poll_status(grid, state, after_round)
    if serve_pending(grid, state, after_round):
        save_checkpoint(state, after_round)


def _check_stop(hooks: EngineHooks) -> None:
    if hooks.should_stop is not None and hooks.should_stop():
        raise RunStopped("stopped on request; resume from the last checkpoint with run.resume")


def server_logged_methods(config: FederationConfig) -> list[str]:
    """Methods whose server-side log this run keeps: the configured one, and with
    ``history.server-log`` every method that reads the server's log."""
    wanted = [config.unlearn.method]
    if config.history.server_log:
        wanted += [m for m in available_methods() if get_method(m).traits.history == "server"]
    return sorted(set(wanted))
