"""Run several engine runs in one Flower simulation: the simulation's only extra powers.

A simulation may do what no production server can: touch the clients' disks. The driver
uses that, and nothing else, between engine runs: it copies a trained run's state (the
training trunk a comparison shares), and files scheduled deletion requests on a client's
disk as its data officer would (``fedunlearn forget``). Each run is then an ordinary
``run_engine`` call with the production ClientApp; the SuperNodes start once.

Ctrl-C: the first one asks the engine to stop at its next checkpoint and gives it a few
seconds; then (or at a second Ctrl-C) Ray and every child process are stopped. Pending
requests and checkpoints stay on disk, and a one-line message says how to go on.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from logging import ERROR
from types import FrameType
from typing import Any

from fedunlearn.config import FederationConfig
from fedunlearn.run_config import config_to_flat

logger = logging.getLogger(__name__)
#: Seconds the engine gets to stop cleanly after the first Ctrl-C (it stops between exchanges).
STOP_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class EngineRun:
    """One engine run of a simulation: its name, and how to get ready for it.

    ``config()`` is called right before the run (it may read what earlier runs wrote);
    ``prepare()`` does the run's disk work first (copy a trunk, file requests).
    """

    name: str
    config: Callable[[], FederationConfig]
    prepare: Callable[[], None] | None = None


RunDone = Callable[[str, BaseException | None], None]


class Interrupted(Exception):
    """The user stopped the simulation (Ctrl-C); finished runs and checkpoints are kept."""


def run_simulation_of(
    runs: Sequence[EngineRun],
    *,
    num_clients: int,
    cpus: int,
    on_done: RunDone | None = None,
    on_round: Callable[[Any], None] | None = None,
    keep_going: Callable[[], bool] | None = None,
    resume_hint: str = "",
) -> None:
    """Run ``runs`` in order in one Flower simulation with ``num_clients`` SuperNodes.

    A run that raises is reported through ``on_done(name, error)`` and the next run still
    starts (it has its own state root). ``keep_going()`` is asked before each run (False:
    stop, e.g. a time budget is spent). Raises Interrupted after Ctrl-C.
    """
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    stop = threading.Event()
    server_app = _driver_app(runs, stop=stop, on_done=on_done, on_round=on_round, keep_going=keep_going)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": cpus}}
    previous = signal.signal(signal.SIGINT, _interrupt_handler(stop, resume_hint))
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients, backend_config=backend)  # type: ignore[arg-type]
    except Exception:
        if not stop.is_set():
            raise
    finally:
        if not stop.is_set():  # after a Ctrl-C, a second one still stops everything at once
            signal.signal(signal.SIGINT, previous)
    if stop.is_set():
        print(f"stopped. {resume_hint}", file=sys.stderr, flush=True)
        raise Interrupted(resume_hint)


def _driver_app(
    runs: Sequence[EngineRun],
    *,
    stop: threading.Event,
    on_done: RunDone | None,
    on_round: Callable[[Any], None] | None,
    keep_going: Callable[[], bool] | None,
) -> Any:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    import server.phase.federaser  # noqa: F401 (registers FedEraser's server-side phase)
    from server.engine import EngineHooks, RunStopped, run_engine

    app = ServerApp()
    hooks = EngineHooks(on_round=on_round, should_stop=stop.is_set)

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for run in runs:
            if stop.is_set() or (keep_going is not None and not keep_going()):
                return
            error: BaseException | None = None
            try:
                if run.prepare is not None:
                    run.prepare()
                config = run.config()
                run_engine(grid, config, flat_config=config_to_flat(config), hooks=hooks)
            except RunStopped:
                return
            except Exception as err:  # one broken run must not cost the others
                logger.log(ERROR, "run %s failed: %s\n%s", run.name, err, traceback.format_exc(limit=6))
                error = err
            if on_done is not None:
                on_done(run.name, error)

    return app


def _interrupt_handler(stop: threading.Event, hint: str) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            _hard_stop(hint)
        stop.set()
        print(f"\nstopping at the next checkpoint (Ctrl-C again to stop now). {hint}", file=sys.stderr, flush=True)
        timer = threading.Timer(STOP_GRACE_SECONDS, _hard_stop, args=(hint,))
        timer.daemon = True
        timer.start()

    return handler


def _hard_stop(hint: str) -> None:
    """Stop Ray and every child process now; the disk holds the last checkpoint."""
    try:
        import ray

        ray.shutdown()
    except Exception:  # noqa: BLE001 - stopping anyway
        pass
    print(f"stopped. {hint}", file=sys.stderr, flush=True)
    os._exit(130)
