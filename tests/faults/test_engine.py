"""The engine every ServerApp runs (``server.engine.run_engine``), on the project's real
ServerApp and ClientApp (in-process transport, ``harness.py``): resuming from a checkpoint,
and the handshake that refuses nodes which disagree about the federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from clients.client_app import app as client_app
from faults.harness import RUN_ID, LocalGrid, config_of, node_contexts, resumed, run_in_process
from fedunlearn import protocol
from fedunlearn.errors import FedUnlearnError
from server.checkpoint import checkpoint_dir

pytestmark = pytest.mark.faults

BASE = {
    "data.dataset": "digits",
    "train.model": "mlp",
    "data.num-clients": 3,
    "data.samples-per-client": 90,
    "data.test-samples": 100,
    "train.batch-size": 30,
    "train.lr": 0.1,
    "train.threads": 1,
}


def _config(tmp: Path, **values: Any) -> Any:
    return config_of({**BASE, "run.out-dir": str(tmp), "run.state-root": str(tmp / "state"), **values})


def _rounds_sent(grid: LocalGrid, message_type: str) -> list[int]:
    return sorted(
        int(m.content[protocol.CONFIG][protocol.SERVER_ROUND])  # type: ignore[arg-type]
        for m in grid.sent
        if m.metadata.message_type == message_type
    )


def test_a_resumed_run_trains_only_the_missing_rounds_under_the_same_lineage(tmp_path: Path) -> None:
    # Prepare: two rounds, then the server stops
    config = _config(tmp_path, **{"train.rounds": 2})
    first = run_in_process(config, LocalGrid(client_app, node_contexts(3)))
    lineage = first["summary"]["lineage"]

    # Execute: the same federation, with new Flower node ids, resumed up to round 3
    grid = LocalGrid(client_app, node_contexts(3, first_node_id=200))
    results = run_in_process(resumed(config, rounds=3), grid)

    # Assert: only round 3 was trained, by every partition, and the results hold all three rounds
    assert _rounds_sent(grid, protocol.TRAIN) == [3, 3, 3]
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["rounds"][:2] == first["rounds"]
    assert sorted(c["partition_id"] for c in results["rounds"][2]["clients"]) == [0, 1, 2]
    assert results["summary"]["lineage"] == lineage
    assert {m.content[protocol.CONFIG][protocol.LINEAGE] for m in grid.sent} == {lineage}
    assert json.loads((checkpoint_dir(tmp_path / "state") / "server.json").read_text())["completed_round"] == 3
    # Assert: each client kept one history, of the same lineage, holding rounds 1-3 with their FedAvg weights
    for pid in range(3):
        histories = tmp_path / "state" / f"client-{pid}" / "history"
        assert [p.name for p in histories.iterdir()] == [lineage]
        manifest = json.loads((histories / lineage / "manifest.json").read_text())
        weights = {row["round"]: row["weight"] for row in manifest["rounds"]}
        assert sorted(weights) == [1, 2, 3]
        assert all(weights[r] == pytest.approx(1 / 3) for r in (1, 2))  # told in round 3's messages


def test_resuming_without_a_checkpoint_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    config = resumed(_config(tmp_path), rounds=1)

    with pytest.raises(FedUnlearnError, match="no checkpoint"):
        run_in_process(config, LocalGrid(client_app, node_contexts(3)))


def _contexts(node_configs: dict[int, dict[str, Any]]) -> dict[int, Context]:
    return {
        node: Context(run_id=RUN_ID, node_id=node, node_config=cfg, state=RecordDict(), run_config={})
        for node, cfg in node_configs.items()
    }


@pytest.mark.parametrize(
    ("node_configs", "message"),
    [
        (
            {100: {"partition-id": 0, "num-partitions": 2}, 101: {"partition-id": 1, "num-partitions": 3}},
            "disagree on num-partitions",
        ),
        (
            {100: {"partition-id": 0, "num-partitions": 2}, 101: {"partition-id": 0, "num-partitions": 2}},
            "same partition id",
        ),
    ],
    ids=["num-partitions", "partition-id"],
)
def test_nodes_that_disagree_about_the_federation_stop_the_handshake(
    tmp_path: Path, node_configs: dict[int, dict[str, Any]], message: str
) -> None:
    # Prepare
    config = _config(tmp_path, **{"data.num-clients": 2, "train.rounds": 1})
    grid = LocalGrid(client_app, _contexts(node_configs))

    # Execute
    with pytest.raises(FedUnlearnError, match=message):
        run_in_process(config, grid)

    # Assert: nothing was trained
    assert _rounds_sent(grid, protocol.TRAIN) == []
    assert not (tmp_path / "results.json").exists()
