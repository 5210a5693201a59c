"""The Flower ServerApp: read and check the run config, then run the engine."""

from __future__ import annotations

from logging import INFO

from flwr.app import Context
from flwr.common import log
from flwr.common.config import unflatten_dict
from flwr.serverapp import Grid, ServerApp

import server.phase.federaser  # noqa: F401 (registers FedEraser's server-side phase)
from fedunlearn.config import FederationConfig
from fedunlearn.run_config import config_from_sections, config_to_flat
from server.engine import EngineHooks, run_engine


def make_server_app(*, config: FederationConfig | None = None, hooks: EngineHooks | None = None) -> ServerApp:
    """A ServerApp running ``config`` (simulations), or ``context.run_config`` (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or config_from_sections(unflatten_dict(dict(context.run_config)))
        flat = config_to_flat(run_config)
        defaults = config_to_flat(FederationConfig())
        log(
            INFO,
            "fedunlearn run config (non-default keys): %s",
            {k: v for k, v in flat.items() if defaults.get(k) != v},
        )
        run_engine(grid, run_config, flat_config=flat, hooks=hooks)

    return app


app = make_server_app()
