"""An in-process Flower transport for fault tests: the project's real ServerApp and ClientApp,
without Ray.

``LocalGrid`` implements the two Grid calls the ServerApp uses (``get_node_ids`` and
``send_and_receive``). Each message is deep-copied on the way out and back (as a real
transport serializes it), handed to the ClientApp with the node's own persistent Context,
and the reply is returned unless the node is offline or took longer than the timeout (then
it is dropped: a dropout or a timeout). An exception in the ClientApp becomes an error reply,
as Flower's runtime does. Every reply the server receives is recorded in ``received``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import unflatten_dict
from flwr.supercore.task_identity import TaskIdentity

from fedunlearn.config import FederationConfig
from fedunlearn.run_config import config_from_sections
from fedunlearn.schedule import parse_schedule

#: Flower's error code for an exception raised by a ClientApp.
CLIENT_APP_RAISED_EXCEPTION = 2
RUN_ID = 4242


@dataclass
class LocalGrid:
    """The Grid of an in-process federation (see the module docstring)."""

    client_app: ClientApp
    contexts: dict[int, Context]
    offline: set[int] = field(default_factory=set)
    received: list[Message] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid4().hex
            self.sent.append(message)
            node = message.metadata.dst_node_id
            if node in self.offline or node not in self.contexts:
                continue
            start = time.perf_counter()
            reply = self._deliver(copy.deepcopy(message), self.contexts[node])
            if timeout is not None and time.perf_counter() - start > timeout:
                continue  # arrived too late: the server has stopped waiting
            reply.metadata.__dict__["_message_id"] = uuid4().hex
            reply = copy.deepcopy(reply)
            self.received.append(reply)
            replies.append(reply)
        return replies

    def _deliver(self, message: Message, context: Context) -> Message:
        try:
            return self.client_app(message, context)
        except Exception as err:  # noqa: BLE001 - the runtime turns any ClientApp exception into an error reply
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=2)}"
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


def node_contexts(
    num_nodes: int, *, plans: Mapping[int, str] | None = None, first_node_id: int = 100
) -> dict[int, Context]:
    """One persistent Context per node (node id ``first_node_id`` + partition id), with optional
    fault plans; a resumed federation gets other node ids for the same partitions."""
    contexts = {}
    for pid in range(num_nodes):
        node = first_node_id + pid
        node_config: dict[str, Any] = {"partition-id": pid, "num-partitions": num_nodes}
        if plans and pid in plans:
            node_config["fault-plan"] = plans[pid]
        contexts[node] = Context(
            run_id=RUN_ID, node_id=node, node_config=node_config, state=RecordDict(), run_config={}
        )
    return contexts


@contextmanager
def server_identity() -> Iterator[None]:
    """The process-wide task identity a ServerApp has while it runs (Message() needs it)."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # noqa: SLF001
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 1, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved  # noqa: SLF001


def config_of(flat: Mapping[str, Any]) -> FederationConfig:
    """The config of flat dotted run-config keys (``train.rounds``), read as the ServerApp reads them."""
    return config_from_sections(unflatten_dict(dict(flat)))


def run_in_process(config: FederationConfig, grid: Any) -> dict[str, Any]:
    """Run the project's ServerApp (``make_server_app(config=...)``, i.e. ``run_engine``)
    against ``grid``; return the parsed results.json."""
    from server.server_app import make_server_app

    app = make_server_app(config=config)
    with server_identity():
        app(grid, Context(run_id=RUN_ID, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    assert config.run.out_dir is not None
    results: dict[str, Any] = json.loads((Path(config.run.out_dir) / "results.json").read_text(encoding="utf-8"))
    return results


def resumed(config: FederationConfig, *, rounds: int, **run: Any) -> FederationConfig:
    """The same federation continued from its checkpoint (``run.resume``) up to ``rounds``."""
    return dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, resume=True, **run),
        train=dataclasses.replace(config.train, rounds=rounds),
    )


def file_scheduled(config: FederationConfig, schedule: str) -> list[str]:
    """File the requests of ``schedule`` entries on the clients' disks under ``run.state-root``,
    as each node's data officer would (``fedunlearn forget``); returns the request ids."""
    from simulations.comparison import file_requests

    entries = parse_schedule(schedule, num_clients=config.data.num_clients)
    return file_requests(config, entries, state_root=Path(config.run.state_root))


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> content), to compare a tree before and after."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unlearning_events(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The unlearning events of a run, in order."""
    return [e for e in results["events"] if e.get("type") == "unlearning"]


class RecordingGrid:
    """Wraps a real Grid and keeps every message the server sends and every reply it receives."""

    def __init__(self, grid: Any, received: list[Message], sent: list[Message]) -> None:
        self._grid, self.received, self.sent = grid, received, sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self.sent.extend(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


def run_simulation_recorded(
    config: FederationConfig, *, received: list[Message], sent: list[Message], cpus: int = 2
) -> dict[str, Any]:
    """Run the project's ServerApp and ClientApp on Flower's simulation engine (Ray), with
    every message the server exchanges recorded; return the parsed results.json."""
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from server.server_app import make_server_app

    inner = make_server_app(config=config)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        inner(RecordingGrid(grid, received, sent), context)  # type: ignore[arg-type]

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": cpus}}
    run_simulation(
        server_app=app, client_app=_client_app(), num_supernodes=config.data.num_clients, backend_config=backend
    )  # type: ignore[arg-type]
    assert config.run.out_dir is not None
    path = Path(config.run.out_dir) / "results.json"
    assert path.exists(), f"the simulation wrote no {path}; see the log"
    results: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return results


def _client_app() -> ClientApp:
    from clients.client_app import app

    return app
