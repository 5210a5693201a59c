"""A benchmark ServerApp: train once, then serve the same deletions with every method, then RT.

One Flower simulation serves one or several benchmark cells in turn (the SuperNodes are
started once; each cell has its own config, out dir and client state root, which the
clients read from every message). All methods of a cell start from the same trained
model, the same client histories and the same pending requests (clients snapshot and
restore their state directories), and share one retrain baseline:

1. FedAvg rounds (the global model after each round is kept as ``models/round-NNN.pt``;
   round 0 is the seeded initial model); clients file the scheduled deletions (they are
   announced, not served);
2. snapshot every client's state; save ``models/before.pt``;
3. per method: restore clients, reset the global model, serve the announced requests with
   that method, save ``models/<label>.pt`` and the phase outcomes. A method label is a
   registered method name, or ``name@variant`` for the same method with other settings
   (``CellPlan.method_overrides[label]``: ``unlearn-*`` / ``sfr-*`` run-config keys);
4. RT: restore, restart from the seeded initial model with the scheduled samples excluded
   (``retrain_mode``, no history, no server round hooks), train the same rounds, save
   ``models/RT.pt`` and ``models/RT-round-NNN.pt``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fedunlearn import protocol
from fedunlearn.config import FederationConfig
from fedunlearn.errors import ConfigError
from server.loop import ServerState, discover_nodes, initial_state, poll_status, run_round, save_model, save_outputs
from server.unlearning_phase import Exchange, PhaseStats, exchange, prepare_phases, serve_pending

SNAPSHOT = "before-unlearning"
#: Run-config key prefixes a method label may override (UnlearnConfig's keys only: anything
#: else would change the training all methods share).
METHOD_KEY_PREFIXES = ("unlearn-", "sfr-")
Progress = Callable[[str], None]
#: ``on_cell(index, error)`` after each cell: ``error`` is None when the cell finished.
CellDone = Callable[[int, BaseException | None], None]


@dataclass(frozen=True)
class CellPlan:
    """One benchmark cell: run-config ``overrides`` and method labels in serving order."""

    overrides: Mapping[str, Any]
    methods: Sequence[str]
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = sorted(
            {k for over in self.method_overrides.values() for k in over if not k.startswith(METHOD_KEY_PREFIXES)}
        )
        unknown = sorted(set(self.method_overrides) - set(self.methods))
        problems = [f"method overrides may only set unlearn-*/sfr-* keys, got {bad}"] if bad else []
        problems += [f"method overrides for labels not in methods: {unknown}"] if unknown else []
        if problems:
            raise ConfigError(problems)


def method_of(label: str) -> str:
    """The registered method (or server phase) a label serves with: ``name@variant`` -> ``name``."""
    return label.split("@", 1)[0]


def with_method(config: FederationConfig, label: str, overrides: Mapping[str, Any] | None = None) -> FederationConfig:
    """The same federation, serving requests with ``label``'s method and settings."""
    if overrides:
        config = FederationConfig.from_run_config({**config.to_run_config(), **overrides})
    return dataclasses.replace(config, unlearn=dataclasses.replace(config.unlearn, method=method_of(label)))


def broadcast(grid: Grid, state: ServerState, message_type: str, name: str) -> None:
    """Send a snapshot/restore instruction to every known client; all must confirm."""
    config = ConfigRecord({protocol.SNAPSHOT_NAME: name})
    nodes = sorted(state.strategy.partition_of)
    exchange(
        grid,
        state,
        Exchange(
            message_type,
            nodes,
            lambda n: state.strategy.build_message(n, message_type, arrays=None, config=config),
            required=True,
        ),
        PhaseStats(),
    )


def set_config(state: ServerState, config: FederationConfig) -> None:
    """Switch the federation config the server uses and sends to clients."""
    state.config = config
    state.strategy.config = config


def run_methods(grid: Grid, state: ServerState, cell: CellPlan, progress: Progress) -> None:
    """Serve the announced requests once per method label from the same snapshot."""
    base, before = state.config, state.arrays
    announced = copy.deepcopy(state.strategy.announced)
    rounds = base.num_rounds
    for label in cell.methods:
        progress(f"method {label}")
        broadcast(grid, state, protocol.QUERY_RESTORE, SNAPSHOT)
        set_config(state, with_method(base, label, cell.method_overrides.get(label)))
        state.arrays, state.awaiting_commit = before, {}
        state.strategy.announced, state.strategy.departed = copy.deepcopy(announced), set()
        start = time.perf_counter()
        outcomes = serve_pending(grid, state, rounds)
        save_model(state, f"models/{label}.pt")
        state.results.events.append(
            {
                "type": "method",
                "method": label,
                "unlearn_method": method_of(label),
                "seconds": time.perf_counter() - start,
                "outcomes": [o.request_id for o in outcomes],
                "served": sum(o.status == "served" for o in outcomes),
            }
        )
    set_config(state, base)


def run_retrain(grid: Grid, state: ServerState, progress: Progress) -> None:
    """RT from the same seeded start, without the scheduled samples, same rounds.

    Server round hooks (FedEraser's update log) are off: RT records nothing, and its wall
    time must not include another method's bookkeeping.
    """
    base, hooks = state.config, state.round_hooks
    broadcast(grid, state, protocol.QUERY_RESTORE, SNAPSHOT)
    rt = dataclasses.replace(base, retrain_mode=True, history=dataclasses.replace(base.history, enabled=False))
    set_config(state, rt)
    state.arrays, state.round_hooks = ArrayRecord(state.initial), []
    state.strategy.departed = set()
    start = time.perf_counter()
    rounds = []
    try:
        for server_round in range(1, base.num_rounds + 1):
            progress(f"RT round {server_round}/{base.num_rounds}")
            rounds.append(dataclasses.asdict(run_round(grid, state, server_round, record=False)))
            save_model(state, f"models/RT-round-{server_round:03d}.pt")
    finally:
        state.round_hooks = hooks
    seconds = time.perf_counter() - start
    save_model(state, "models/RT.pt")
    state.results.events.append(
        {"type": "retrain", "seconds": seconds, "rounds": rounds, "messages": sum(r["messages"] for r in rounds)}
    )
    set_config(state, base)


def run_bench_cell(grid: Grid, context: Context, cell: CellPlan, say: Progress) -> None:
    """Train, snapshot, serve with every method, retrain, write ``results.json`` (one cell)."""
    config = FederationConfig.from_run_config({**dict(context.run_config), **dict(cell.overrides)})
    state = initial_state(config)
    for label in cell.methods:
        prepare_phases(dataclasses.replace(state, config=with_method(config, label, cell.method_overrides.get(label))))
    discover_nodes(grid, state, wait_seconds=config.round_timeout)
    save_model(state, "models/round-000.pt")
    for server_round in range(1, config.num_rounds + 1):
        say(f"round {server_round}/{config.num_rounds}")
        run_round(grid, state, server_round)
        save_model(state, f"models/round-{server_round:03d}.pt")
    poll_status(grid, state, config.num_rounds)
    save_model(state, "models/before.pt")
    broadcast(grid, state, protocol.QUERY_SNAPSHOT, SNAPSHOT)
    run_methods(grid, state, cell, say)
    run_retrain(grid, state, say)
    save_outputs(state)


def make_bench_server_app(
    *,
    cells: Sequence[CellPlan],
    progress: Progress | None = None,
    on_cell: CellDone | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> ServerApp:
    """The benchmark ServerApp for ``cells`` (served in order, in one simulation).

    A cell that raises is logged and reported through ``on_cell(index, error)``; the next
    cell still runs (its own state root, so nothing of the failed cell leaks into it).
    ``keep_going()`` is asked before each cell; False ends the run (later cells are not run
    and get no callback), e.g. when a time budget is spent.
    """
    app = ServerApp()
    say = progress or (lambda text: log(INFO, "[BENCH] %s", text))

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for index, cell in enumerate(cells):
            if keep_going is not None and not keep_going():
                log(INFO, "[BENCH] stopping before cell %d of %d (keep_going() is False)", index + 1, len(cells))
                break
            error: BaseException | None = None
            try:
                run_bench_cell(grid, context, cell, say)
            except Exception as err:  # one broken cell must not cost the others
                log(ERROR, "[BENCH] cell %d failed: %s\n%s", index, err, traceback.format_exc(limit=5))
                error = err
            if on_cell is not None:
                on_cell(index, error)

    return app
