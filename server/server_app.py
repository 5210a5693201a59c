"""The Flower ServerApp: read the run config, build the strategy, run the federation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from logging import INFO
from typing import Any

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

import server.federaser  # noqa: F401 (registers the FedEraser phase)
from fedunlearn.config import FederationConfig
from fedunlearn.results import RoundRecord
from server.loop import discover_nodes, initial_state, poll_status, run_round, save_outputs
from server.unlearning_phase import prepare_phases, serve_pending


def make_server_app(
    *, overrides: Mapping[str, Any] | None = None, on_round: Callable[[RoundRecord], None] | None = None
) -> ServerApp:
    """A ServerApp whose config is ``context.run_config`` updated with ``overrides``.

    ``flwr run`` uses the module-level ``app`` (config from pyproject + ``--run-config``);
    simulations pass ``overrides`` because ``run_simulation`` gives an empty run_config,
    and ``on_round`` to show progress.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config({**dict(context.run_config), **dict(overrides or {})})
        log(INFO, "fedunlearn federation: %s", config.to_run_config())
        state = initial_state(config)
        prepare_phases(state)
        discover_nodes(grid, state, wait_seconds=config.round_timeout)
        for server_round in range(1, config.num_rounds + 1):
            record = run_round(grid, state, server_round)
            serve_pending(grid, state, server_round)
            if on_round is not None:
                on_round(record)
        poll_status(grid, state, config.num_rounds)  # requests filed after the last round
        serve_pending(grid, state, config.num_rounds)
        save_outputs(state)

    return app


app = make_server_app()
