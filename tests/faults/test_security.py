"""Deletion only through the owning node: what a server can and cannot make a client do.

The ClientApp is driven directly with forged server messages (in-process transport,
``harness.py``). The server has no message that files, edits or widens a request: it can
only name a request the client already holds, and a request naming another client's ids is
refused by the owning client's checks (``test_bad_input.py`` covers those checks and the
node CLI with generated inputs). Errors that reach the server name no sample ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message

from clients.client_app import app as client_app
from faults.harness import LocalGrid, config_of, node_contexts, server_identity, tree_bytes
from fedunlearn import protocol
from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionQueue, DeletionRequest
from fedunlearn.models import build_model
from fedunlearn.run_config import config_to_flat
from server.strategy import UnlearningFedAvg

pytestmark = pytest.mark.faults

#: Every message type the ClientApp answers: none of them files or edits a request.
CLIENT_API = {
    "query.status",
    "train.default",
    "evaluate.default",
    "query.fisher",
    "train.forget",
    "train.remain",
    "evaluate.verify",
    "query.commit",
}
#: Actions that would let a server roll a node back to an old state (un-serving deletions).
ROLLBACK_ACTIONS = {"query.snapshot", "query.restore"}


@pytest.fixture
def federation(tmp_path: Path) -> tuple[LocalGrid, UnlearningFedAvg, FederationConfig]:
    config = config_of(
        {
            "data.dataset": "digits",
            "train.model": "mlp",
            "data.num-clients": 2,
            "data.samples-per-client": 80,
            "data.test-samples": 40,
            "run.state-root": str(tmp_path / "state"),
            "run.out-dir": str(tmp_path),
            "train.threads": 1,
            "train.batch-size": 20,
        }
    )
    model = build_model("mlp", input_shape=(1, 28, 28), num_classes=10)
    strategy = UnlearningFedAvg(config, reference=ArrayRecord(model.state_dict()), flat_config=config_to_flat(config))
    strategy.lineage = "run-security"
    strategy.partition_of = {100: 0, 101: 1}
    return LocalGrid(client_app, node_contexts(2)), strategy, config


def send(
    grid: LocalGrid,
    strategy: UnlearningFedAvg,
    node: int,
    kind: str,
    config: dict[str, object],
    *,
    arrays: bool = False,
) -> Message:
    with server_identity():
        state = build_model("mlp", input_shape=(1, 28, 28), num_classes=10).state_dict()
        message = strategy.build_message(
            node, kind, arrays=ArrayRecord(state) if arrays else None, config=ConfigRecord(config)
        )  # type: ignore[arg-type]
        (reply,) = grid.send_and_receive([message])
    return reply


def test_the_client_api_has_no_message_that_files_a_request() -> None:
    assert set(client_app._registered_funcs) == CLIENT_API  # noqa: SLF001


def test_the_production_app_has_no_state_rollback_actions() -> None:
    # A production node must not let a server restore an old state (un-serving deletions).
    from clients.client_app import build_client_app

    assert ROLLBACK_ACTIONS.isdisjoint(client_app._registered_funcs)  # noqa: SLF001
    assert ROLLBACK_ACTIONS.isdisjoint(build_client_app()._registered_funcs)  # noqa: SLF001


@pytest.mark.parametrize("kind", [protocol.TRAIN_FORGET, protocol.EVALUATE_VERIFY, protocol.QUERY_COMMIT])
def test_a_request_id_the_client_does_not_hold_is_refused_and_nothing_changes(
    federation: tuple[LocalGrid, UnlearningFedAvg, FederationConfig],
    kind: str,
) -> None:
    # Prepare: the node has joined (its site files exist) and holds one request of its own
    grid, strategy, config = federation
    send(grid, strategy, 100, protocol.QUERY_STATUS, {})
    state_dir = Path(config.run.state_root) / "client-0"
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="sample", sample_ids=[1, 2], request_id="own"))
    before = tree_bytes(state_dir)

    # Execute: the server names a request it invented
    reply = send(
        grid,
        strategy,
        100,
        kind,
        {protocol.REQUEST_ID: "server-made", protocol.STEP: 0, protocol.RECEIPT_JSON: "{}"},
        arrays=kind != protocol.QUERY_COMMIT,
    )

    # Assert
    assert reply.has_error()
    assert reply.error.reason == (
        "UnknownRequestError: this client has no deletion request 'server-made'; "
        "requests are filed only on the owning node (fedunlearn forget)"
    )
    assert tree_bytes(state_dir) == before


def test_a_request_naming_another_clients_ids_is_refused_without_leaking_them(
    federation: tuple[LocalGrid, UnlearningFedAvg, FederationConfig],
) -> None:
    # Prepare: client 0's queue holds a request naming client 1's ids (e.g. a copy-paste mistake)
    grid, strategy, config = federation
    send(grid, strategy, 100, protocol.QUERY_STATUS, {})
    send(grid, strategy, 101, protocol.QUERY_STATUS, {})
    foreign = np.load(Path(config.run.state_root) / "client-1" / "sample_ids.npy")[:5].tolist()
    state_dir = Path(config.run.state_root) / "client-0"
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="sample", sample_ids=foreign, request_id="wrong"))
    before = tree_bytes(state_dir)

    # Execute
    reply = send(
        grid, strategy, 100, protocol.TRAIN_FORGET, {protocol.REQUEST_ID: "wrong", protocol.STEP: 0}, arrays=True
    )

    # Assert: refused by the owning check; the server learns that, not which ids
    assert reply.has_error() and reply.error.reason.startswith("DeletionRequestError: this client cannot serve")
    assert not any(str(i) in reply.error.reason for i in foreign) and "Traceback" not in reply.error.reason
    assert tree_bytes(state_dir) == before


def test_a_failure_report_only_records_the_reason_on_a_pending_request(
    federation: tuple[LocalGrid, UnlearningFedAvg, FederationConfig],
) -> None:
    # Prepare
    grid, strategy, config = federation
    send(grid, strategy, 100, protocol.QUERY_STATUS, {})
    queue = DeletionQueue(Path(config.run.state_root) / "client-0")
    original = queue.submit(DeletionRequest.new(kind="sample", sample_ids=[3], request_id="own"))

    # Execute
    reply = send(
        grid,
        strategy,
        100,
        protocol.QUERY_COMMIT,
        {
            protocol.REQUEST_ID: "own",
            protocol.OUTCOME: protocol.OUTCOME_FAILED,
            protocol.REASON: "round 4: verify failed",
        },
    )

    # Assert: same request (ids, kind), still pending, with the reason and one more attempt
    updated = queue.get("own")
    assert not reply.has_error() and reply.content[protocol.METRICS][protocol.ATTEMPTS] == 1
    assert (updated.status, updated.last_error, updated.attempts) == ("pending", "round 4: verify failed", 1)
    assert (updated.kind, updated.sample_ids, updated.created_at) == (
        original.kind,
        original.sample_ids,
        original.created_at,
    )
    status = send(grid, strategy, 100, protocol.QUERY_STATUS, {})
    assert dict(status.content[protocol.STATUS]) == {
        protocol.PARTITION_ID: 0,
        protocol.NUM_PARTITIONS: 2,
        protocol.REQUEST_IDS: ["own"],
    }


def test_a_client_error_reply_names_no_path_on_the_node(
    federation: tuple[LocalGrid, UnlearningFedAvg, FederationConfig],
    tmp_path: Path,
) -> None:
    # Prepare: a request of the node's own, but the node never recorded the history it needs
    grid, strategy, config = federation
    send(grid, strategy, 100, protocol.QUERY_STATUS, {})
    state_dir = Path(config.run.state_root) / "client-0"
    own = np.load(state_dir / "sample_ids.npy")[:2].tolist()
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="sample", sample_ids=own, request_id="own"))

    # Execute
    reply = send(
        grid,
        strategy,
        100,
        protocol.TRAIN_FORGET,
        {protocol.REQUEST_ID: "own", protocol.STEP: 0, protocol.TRAINED_ROUNDS: [1]},
        arrays=True,
    )

    # Assert: the server learns what is wrong, not where the node keeps its files
    reason = reply.error.reason or ""
    assert reply.has_error() and reason.startswith("HistoryError: ")
    assert "<path on the node>" in reason
    assert str(tmp_path) not in reason and str(state_dir) not in reason and "Traceback" not in reason


@pytest.mark.parametrize(
    "path", ["/srv/hospital/state/client-0/history/run-1", "C:\\fedunlearn\\state\\client-0", "/var/lib/node/state/"]
)
def test_server_reason_replaces_absolute_paths(path: str) -> None:
    from clients.common import server_reason
    from fedunlearn.errors import HistoryError

    reason = server_reason(HistoryError(f"no update history at {path}: the directory does not exist"))

    assert reason == "HistoryError: no update history at <path on the node>: the directory does not exist"
