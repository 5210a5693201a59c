"""A benchmark ServerApp: train once, then serve the same deletions with every method, then RT.

One Flower simulation per benchmark cell, so all methods of a cell start from the same
trained model, the same client histories and the same pending requests (clients snapshot
and restore their state directories), and share one retrain baseline:

1. FedAvg rounds; clients file the scheduled deletions (they are announced, not served);
2. snapshot every client's state; save ``models/before.pt``;
3. per method: restore clients, reset the global model, serve the announced requests with
   that method, save ``models/<method>.pt`` and the phase outcomes;
4. RT: restore, restart from the seeded initial model with the scheduled samples excluded
   (``retrain_mode``, no history), train the same rounds, save ``models/RT.pt``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedunlearn import protocol
from fedunlearn.config import FederationConfig
from server.loop import ServerState, discover_nodes, initial_state, poll_status, run_round, save_model, save_outputs
from server.unlearning_phase import Exchange, PhaseStats, exchange, prepare_phases, serve_pending

SNAPSHOT = "before-unlearning"
Progress = Callable[[str], None]


def with_method(config: FederationConfig, method: str) -> FederationConfig:
    """The same federation, serving requests with ``method``."""
    return dataclasses.replace(config, unlearn=dataclasses.replace(config.unlearn, method=method))


def broadcast(grid: Grid, state: ServerState, message_type: str, name: str) -> None:
    """Send a snapshot/restore instruction to every known client; all must confirm."""
    config = ConfigRecord({protocol.SNAPSHOT_NAME: name})
    nodes = sorted(state.strategy.partition_of)
    exchange(grid, state, Exchange(message_type, nodes, lambda n: state.strategy.build_message(
        n, message_type, arrays=None, config=config), required=True), PhaseStats())


def set_config(state: ServerState, config: FederationConfig) -> None:
    """Switch the federation config the server uses and sends to clients."""
    state.config = config
    state.strategy.config = config


def run_methods(grid: Grid, state: ServerState, methods: Sequence[str], progress: Progress) -> None:
    """Serve the announced requests once per method from the same snapshot."""
    base, before = state.config, state.arrays
    announced = copy.deepcopy(state.strategy.announced)
    rounds = base.num_rounds
    for method in methods:
        progress(f"method {method}")
        broadcast(grid, state, protocol.QUERY_RESTORE, SNAPSHOT)
        set_config(state, with_method(base, method))
        state.arrays, state.awaiting_commit = before, {}
        state.strategy.announced, state.strategy.departed = copy.deepcopy(announced), set()
        start = time.perf_counter()
        outcomes = serve_pending(grid, state, rounds)
        save_model(state, f"models/{method}.pt")
        state.results.events.append({"type": "method", "method": method, "seconds": time.perf_counter() - start,
                                     "outcomes": [o.request_id for o in outcomes],
                                     "served": sum(o.status == "served" for o in outcomes)})
    set_config(state, base)


def run_retrain(grid: Grid, state: ServerState, progress: Progress) -> None:
    """RT from the same seeded start, without the scheduled samples, same rounds."""
    base = state.config
    broadcast(grid, state, protocol.QUERY_RESTORE, SNAPSHOT)
    rt = dataclasses.replace(base, retrain_mode=True, history=dataclasses.replace(base.history, enabled=False))
    set_config(state, rt)
    state.arrays = ArrayRecord(state.initial)
    state.strategy.departed = set()
    start = time.perf_counter()
    rounds = []
    for server_round in range(1, base.num_rounds + 1):
        progress(f"RT round {server_round}/{base.num_rounds}")
        rounds.append(dataclasses.asdict(run_round(grid, state, server_round, record=False)))
    save_model(state, "models/RT.pt")
    state.results.events.append({"type": "retrain", "seconds": time.perf_counter() - start, "rounds": rounds,
                                 "messages": sum(r["messages"] for r in rounds)})
    set_config(state, base)


def make_bench_server_app(
    *, overrides: Mapping[str, Any], methods: Sequence[str], progress: Progress | None = None
) -> ServerApp:
    """The benchmark ServerApp for one cell (config ``overrides``; ``methods`` in order)."""
    app = ServerApp()
    say = progress or (lambda text: log(INFO, "[BENCH] %s", text))

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config({**dict(context.run_config), **dict(overrides)})
        state = initial_state(config)
        for method in methods:
            prepare_phases(dataclasses.replace(state, config=with_method(config, method)))
        discover_nodes(grid, state, wait_seconds=config.round_timeout)
        for server_round in range(1, config.num_rounds + 1):
            say(f"round {server_round}/{config.num_rounds}")
            run_round(grid, state, server_round)
        poll_status(grid, state, config.num_rounds)
        save_model(state, "models/before.pt")
        broadcast(grid, state, protocol.QUERY_SNAPSHOT, SNAPSHOT)
        run_methods(grid, state, methods, say)
        run_retrain(grid, state, say)
        save_outputs(state)

    return app
