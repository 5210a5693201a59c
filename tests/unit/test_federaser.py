"""FedEraser: calibration math, the on-disk update log, reconstruction, and the server phase.

The math is checked against hand-computed values; the server phase runs with a fake grid
whose "clients" answer with fixed numbers, so the rebuilt model is hand-computable too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from fedunlearn import protocol
from fedunlearn.config import DataConfig, FederationConfig, HistoryConfig, RunSettings, UnlearnConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import HistoryCorruptedError, UnlearningError
from fedunlearn.federaser import (
    UpdateLog,
    aggregate_updates,
    calibrate,
    calibration_steps,
    client_update,
    is_retained_round,
    reconstruct,
)
from fedunlearn.results import RunResults
from server.engine import server_logged_methods
from server.phase.federaser import attach_update_log, record_round, run_federaser_phase, update_log
from server.phase.serve import phase_runner, prepare_phases
from server.state import ServerState
from server.strategy import UnlearningFedAvg


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows)


# ------------------------------------------------------------------------------- math
def test_client_update_is_client_minus_round_start_over_float_entries() -> None:
    start = {"w": t([[1.0, 2.0]]), "count": torch.tensor(3)}
    client = {"w": t([[1.5, 0.0]]), "count": torch.tensor(4)}

    update = client_update(client, start)

    assert set(update) == {"w"}
    assert torch.equal(update["w"], t([[0.5, -2.0]]))


def test_calibration_takes_the_stored_length_and_the_fresh_direction_per_layer() -> None:
    stored = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 2.0])}  # norms 5 and 2
    fresh = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, -3.0])}

    calibrated = calibrate(stored, fresh)

    assert torch.allclose(calibrated["a"], torch.tensor([5.0, 0.0]))
    assert torch.allclose(calibrated["b"], torch.tensor([0.0, -2.0]))


def test_whole_vector_calibration_uses_one_norm_for_all_layers() -> None:
    stored = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 2.0])}  # norm sqrt(29)
    fresh = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, -3.0])}  # norm sqrt(10)

    calibrated = calibrate(stored, fresh, per_layer=False)

    scale = math.sqrt(29 / 10)
    assert torch.allclose(calibrated["a"], torch.tensor([scale, 0.0]))
    assert torch.allclose(calibrated["b"], torch.tensor([0.0, -3 * scale]))


def test_a_zero_fresh_layer_gets_no_step_and_keys_must_agree() -> None:
    calibrated = calibrate({"a": torch.tensor([3.0, 4.0])}, {"a": torch.zeros(2)})

    assert torch.equal(calibrated["a"], torch.zeros(2))
    with pytest.raises(UnlearningError, match="same entries"):
        calibrate({"a": torch.zeros(2)}, {"b": torch.zeros(2)})


def test_aggregation_renormalises_the_fedavg_weights_over_the_given_clients() -> None:
    updates = [{"w": torch.tensor([4.0])}, {"w": torch.tensor([8.0])}]

    step = aggregate_updates(updates, [100, 300])

    assert torch.allclose(step["w"], torch.tensor([0.25 * 4 + 0.75 * 8]))


def test_calibration_steps_are_ratio_times_the_local_steps_of_a_round() -> None:
    assert calibration_steps(num_examples=1000, batch_size=64, local_epochs=1) == 8  # ceil(0.5 * 16)
    assert calibration_steps(num_examples=300, batch_size=64, local_epochs=1) == 3  # ceil(0.5 * 5)
    assert calibration_steps(num_examples=300, batch_size=64, local_epochs=2) == 5
    assert calibration_steps(num_examples=10, batch_size=64, local_epochs=1, ratio=0.1) == 1
    with pytest.raises(ValueError, match="ratio"):
        calibration_steps(num_examples=10, batch_size=64, local_epochs=1, ratio=0.0)


def test_retained_rounds_start_at_one_every_interval() -> None:
    assert [r for r in range(1, 7) if is_retained_round(r, interval=2)] == [1, 3, 5]
    assert [r for r in range(1, 4) if is_retained_round(r, interval=1)] == [1, 2, 3]


# -------------------------------------------------------------------------------- log
def write_two_rounds(log: UpdateLog) -> None:
    """Round 1 from zeros; client 2 is the one to forget (its updates are huge)."""
    log.write_round(
        1,
        global_state={"w": torch.zeros(2)},
        updates=[
            (0, 100, {"w": torch.tensor([1.0, 0.0])}),
            (1, 300, {"w": torch.tensor([0.0, 1.0])}),
            (2, 200, {"w": torch.tensor([9.0, 9.0])}),
        ],
    )
    log.write_round(
        2,
        global_state={"w": torch.tensor([5.0, 5.0])},
        updates=[
            (0, 100, {"w": torch.tensor([3.0, 4.0])}),
            (1, 300, {"w": torch.tensor([0.0, 2.0])}),
            (2, 200, {"w": torch.tensor([7.0, 7.0])}),
        ],
    )


def test_log_round_trips_and_counts_its_bytes(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path / "log")
    write_two_rounds(log)

    rounds = log.rounds()

    assert [r.round for r in rounds] == [1, 2]
    assert rounds[1].num_examples == {0: 100, 1: 300, 2: 200}
    assert torch.equal(log.load_update(rounds[1], 0)["w"], torch.tensor([3.0, 4.0]))
    assert torch.equal(log.load_global(rounds[1])["w"], torch.tensor([5.0, 5.0]))
    files = sum(p.stat().st_size for p in (tmp_path / "log").rglob("*.pt"))
    assert sum(r.bytes for r in rounds) == files
    assert log.disk_bytes() > files  # plus the manifests


def test_a_changed_file_fails_its_checksum(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path)
    write_two_rounds(log)
    entry = log.rounds()[0]
    path = tmp_path / "round-000001" / entry.clients[1].name
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(HistoryCorruptedError, match="SHA-256"):
        log.load_update(entry, 1)
    assert torch.equal(log.load_update(entry, 0)["w"], torch.tensor([1.0, 0.0]))


def test_a_round_without_manifest_is_ignored_and_a_broken_manifest_is_reported(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path)
    write_two_rounds(log)
    (tmp_path / "round-000002" / "manifest.json").unlink()

    assert [r.round for r in log.rounds()] == [1]
    (tmp_path / "round-000001" / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HistoryCorruptedError, match="unreadable"):
        log.rounds()


def test_removing_a_client_deletes_its_files_and_manifest_entries(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path)
    write_two_rounds(log)
    sizes = [r.clients[2].bytes for r in log.rounds()]

    freed = log.remove_client(2)

    assert freed == sum(sizes)
    assert all(2 not in r.clients and 2 not in r.num_examples for r in log.rounds())
    assert not list(tmp_path.rglob("client-0002.pt"))
    assert log.remove_client(2) == 0


# ---------------------------------------------------------------------- reconstruction
def test_reconstruction_is_hand_computed(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path)
    write_two_rounds(log)
    calls: list[tuple[int, list[float], list[int]]] = []

    def fresh(server_round: int, theta: dict[str, torch.Tensor], pids: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        calls.append((server_round, theta["w"].tolist(), pids))
        return {0: {"w": torch.tensor([0.0, 1.0])}, 1: {"w": torch.tensor([1.0, 0.0])}}

    rebuilt = reconstruct(log, excluded={2}, calibrate_round=fresh)

    # round 1 uncalibrated: 0.25 * [1, 0] + 0.75 * [0, 1] = [0.25, 0.75]
    # round 2: client 0 -> 5 * [0, 1], client 1 -> 2 * [1, 0]; 0.25 * [0, 5] + 0.75 * [2, 0] = [1.5, 1.25]
    assert calls == [(2, [0.25, 0.75], [0, 1])]
    assert torch.allclose(rebuilt.state["w"], torch.tensor([1.75, 2.0]))
    assert rebuilt.rounds == [1, 2] and rebuilt.calibrated == [2]
    assert rebuilt.clients == {1: [0, 1], 2: [0, 1]}


def test_reconstruction_renormalises_over_the_clients_that_calibrated(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path)
    write_two_rounds(log)

    rebuilt = reconstruct(log, excluded={2}, calibrate_round=lambda r, th, p: {0: {"w": torch.tensor([0.0, 1.0])}})

    assert torch.allclose(rebuilt.state["w"], torch.tensor([0.25, 0.75 + 5.0]))
    assert rebuilt.clients[2] == [0]


def test_reconstruction_fails_without_log_or_without_calibration(tmp_path: Path) -> None:
    with pytest.raises(UnlearningError, match="no retained rounds"):
        reconstruct(UpdateLog(tmp_path / "empty"), excluded={2}, calibrate_round=lambda r, th, p: {})
    log = UpdateLog(tmp_path / "log")
    write_two_rounds(log)
    with pytest.raises(UnlearningError, match="calibration returned"):
        reconstruct(log, excluded={2}, calibrate_round=lambda r, th, p: {})


# ------------------------------------------------------------------- server phase
NODES = {101: 0, 102: 1, 103: 2}  # Flower node id -> partition id; 103 is the forgetting client


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """The identity Flower's runtime gives the ServerApp process (restored afterwards)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


Responder = Callable[[Message], RecordDict | None]


class FakeGrid:
    """Answers each message with ``respond(message)`` (None: the node stays silent)."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            content = self.respond(message)
            if content is not None:
                replies.append(Message(content, reply_to=message))
        return replies


def client(keeps_data: bool = False, silent: set[int] | None = None, verified: int = 1) -> Responder:
    fresh = {101: t([[0.0, 1.0], [0.0, 0.0]]), 102: t([[1.0, 0.0], [0.0, 0.0]])}

    def respond(message: Message) -> RecordDict | None:
        kind, node = message.metadata.message_type, message.metadata.dst_node_id
        if node in (silent or set()):
            return None
        if kind == protocol.EVALUATE_VERIFY:
            metrics = {protocol.PASSED: 0, protocol.FA: 0.9, **({protocol.RA: 0.95} if keeps_data else {})}
            return RecordDict({protocol.METRICS: MetricRecord(metrics)})
        if kind == protocol.TRAIN_REMAIN:
            return RecordDict(
                {
                    protocol.ARRAYS: ArrayRecord({"weight": fresh[node]}),
                    protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 50}),
                }
            )
        if not verified:
            return RecordDict({protocol.METRICS: MetricRecord({protocol.VERIFIED: 0, "check-FA": 0.9})})
        receipt = {**json.loads(str(message.content[protocol.CONFIG][protocol.RECEIPT_JSON])), "kind": "client"}
        return RecordDict(
            {
                protocol.METRICS: MetricRecord({protocol.VERIFIED: 1}),
                protocol.RECEIPT: ConfigRecord({protocol.RECEIPT_JSON: json.dumps(receipt)}),
            }
        )

    return respond


def train_reply(strategy: UnlearningFedAvg, node: int, weight: torch.Tensor, count: int) -> Message:
    instruction = strategy.build_message(node, protocol.TRAIN, arrays=None, config=ConfigRecord())
    content = RecordDict(
        {
            protocol.ARRAYS: ArrayRecord({"weight": weight}),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count}),
        }
    )
    return Message(content, reply_to=instruction)


@pytest.fixture
def state(tmp_path: Path) -> ServerState:
    """A server after two logged rounds (the same numbers as ``write_two_rounds``, as 2x2 weights)."""
    config = FederationConfig(
        run=RunSettings(state_root=str(tmp_path), retries=0),
        data=DataConfig(num_clients=3),
        unlearn=UnlearnConfig(method="federaser", max_ta_drop=1.0),
    )
    initial = ArrayRecord({"weight": torch.zeros(2, 2)})
    strategy = UnlearningFedAvg(config, reference=initial)
    strategy.partition_of.update(NODES)
    model = nn.Linear(2, 2, bias=False)
    test = IndexedDataset(t([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), torch.arange(2), 2)
    server = ServerState(config, strategy, initial, model, test, RunResults(config={}), lineage="run-test")
    attach_update_log(server)
    starts = {1: torch.zeros(2, 2), 2: torch.full((2, 2), 5.0)}
    updates = {
        1: {101: t([[1.0, 0.0], [0.0, 0.0]]), 102: t([[0.0, 0.0], [0.0, 1.0]]), 103: torch.full((2, 2), 9.0)},
        2: {101: t([[3.0, 4.0], [0.0, 0.0]]), 102: t([[0.0, 0.0], [0.0, 2.0]]), 103: torch.full((2, 2), 7.0)},
    }
    counts = {101: 100, 102: 300, 103: 200}
    for r in (1, 2):
        strategy.last_train_replies = [
            train_reply(strategy, n, starts[r] + u, counts[n]) for n, u in updates[r].items()
        ]
        for hook in server.round_hooks:
            hook(server, r, ArrayRecord({"weight": starts[r]}))
    server.arrays = ArrayRecord({"weight": torch.full((2, 2), 6.0)})  # the trained global model
    return server


def test_setup_adds_the_hook_and_the_hook_logs_each_round(state: ServerState) -> None:
    events = [e for e in state.results.events if e["type"] == "federaser-log"]

    assert state.round_hooks == [record_round]
    assert [e["round"] for e in events] == [1, 2] and events[0]["clients"] == [0, 1, 2]
    assert events[-1]["total_bytes"] == update_log(state).disk_bytes() > 0
    assert torch.equal(
        update_log(state).load_update(update_log(state).rounds()[1], 0)["weight"], t([[3.0, 4.0], [0.0, 0.0]])
    )


def bare_state(config: FederationConfig) -> ServerState:
    reference = ArrayRecord({"w": torch.zeros(1)})
    return ServerState(
        config,
        UnlearningFedAvg(config, reference=reference),
        reference,
        nn.Linear(1, 1),
        None,  # type: ignore[arg-type]
        RunResults(config={}),
        lineage="run-test",
    )


def test_no_log_is_kept_unless_a_method_of_the_run_reads_it(tmp_path: Path) -> None:
    plain = FederationConfig(run=RunSettings(state_root=str(tmp_path / "a")))
    logged = FederationConfig(run=RunSettings(state_root=str(tmp_path / "b")), history=HistoryConfig(server_log=True))
    without, with_log = bare_state(plain), bare_state(logged)

    prepare_phases(without, server_logged_methods(plain))
    prepare_phases(with_log, server_logged_methods(logged))

    assert server_logged_methods(plain) == ["partial_amnesiac"] and without.round_hooks == []
    assert "federaser" in server_logged_methods(logged) and with_log.round_hooks == [record_round]
    assert phase_runner("federaser") is run_federaser_phase


def test_a_fresh_run_removes_the_log_of_an_earlier_run(tmp_path: Path) -> None:
    server = bare_state(FederationConfig(run=RunSettings(state_root=str(tmp_path))))
    write_two_rounds(update_log(server))

    attach_update_log(server)

    assert update_log(server).rounds() == []
    assert server.round_hooks == [record_round]


def test_phase_rebuilds_the_model_without_the_client_and_commits(state: ServerState) -> None:
    grid = FakeGrid(client())

    outcome = run_federaser_phase(grid, state, node_id=103, request_id="req-1", server_round=2)  # type: ignore[arg-type]

    # round 1: 0.25 * [[1, 0], [0, 0]] + 0.75 * [[0, 0], [0, 1]] = [[0.25, 0], [0, 0.75]]
    # round 2: client 0 -> 5 * [[0, 1], [0, 0]], client 1 -> 2 * [[1, 0], [0, 0]]; FedAvg adds [[1.5, 1.25], [0, 0]]
    assert outcome.status == "served", outcome.reason
    assert torch.allclose(state.arrays.to_torch_state_dict()["weight"], t([[1.75, 1.25], [0.0, 0.75]]))
    assert 103 in state.strategy.departed
    calibration = [m for m in grid.sent if m.metadata.message_type == protocol.TRAIN_REMAIN]
    assert {m.metadata.dst_node_id: m.content[protocol.CONFIG][protocol.REMAIN_STEPS] for m in calibration} == {
        101: 1,
        102: 3,
    }  # ceil(0.5 * ceil(100 / 64)), ceil(0.5 * ceil(300 / 64))
    assert torch.allclose(
        calibration[0].content[protocol.ARRAYS].to_torch_state_dict()["weight"], t([[0.25, 0.0], [0.0, 0.75]])
    )
    assert outcome.stats.messages == 8  # probe, 2 calibrations, commit (judged by the client): each sent and answered
    (commit,) = [m for m in grid.sent if m.metadata.message_type == protocol.QUERY_COMMIT]
    assert torch.equal(commit.content[protocol.ARRAYS].to_torch_state_dict()["weight"], t([[1.75, 1.25], [0.0, 0.75]]))
    assert outcome.metrics["calibration_steps"] == 4 and outcome.metrics["log_rounds"] == 2
    assert outcome.metrics["log_bytes"] > outcome.metrics["log_bytes_freed"] > 0
    assert all(2 not in r.clients for r in update_log(state).rounds())


def test_sample_or_class_requests_are_deferred_with_the_model_unchanged(state: ServerState) -> None:
    grid = FakeGrid(client(keeps_data=True))

    outcome = run_federaser_phase(grid, state, node_id=103, request_id="req-1", server_round=2)  # type: ignore[arg-type]

    assert outcome.status == "deferred"
    assert outcome.reason is not None and "removes whole clients" in outcome.reason
    assert torch.equal(state.arrays.to_torch_state_dict()["weight"], torch.full((2, 2), 6.0))
    assert outcome.stats.messages == 2 and 103 not in state.strategy.departed
    assert all(2 in r.clients for r in update_log(state).rounds())


def test_phase_is_deferred_when_no_remaining_client_calibrates(state: ServerState) -> None:
    grid = FakeGrid(client(silent={101, 102}))

    outcome = run_federaser_phase(grid, state, node_id=103, request_id="req-1", server_round=2)  # type: ignore[arg-type]

    assert outcome.status == "deferred" and "no remaining client" in (outcome.reason or "")
    assert torch.equal(state.arrays.to_torch_state_dict()["weight"], torch.full((2, 2), 6.0))


def test_phase_continues_with_the_clients_that_calibrate(state: ServerState) -> None:
    grid = FakeGrid(client(silent={102}))

    outcome = run_federaser_phase(grid, state, node_id=103, request_id="req-1", server_round=2)  # type: ignore[arg-type]

    # round 2 only from client 0 (weight renormalised to 1): [[0.25, 0], [0, 0.75]] + [[0, 5], [0, 0]]
    assert outcome.status == "served"
    assert torch.allclose(state.arrays.to_torch_state_dict()["weight"], t([[0.25, 5.0], [0.0, 0.75]]))


def test_a_rebuilt_model_the_client_does_not_verify_is_rolled_back_and_the_log_kept(state: ServerState) -> None:
    grid = FakeGrid(client(verified=0))

    outcome = run_federaser_phase(grid, state, node_id=103, request_id="req-1", server_round=2)  # type: ignore[arg-type]

    assert outcome.status == "not_verified" and "not verified" in (outcome.reason or "")
    assert torch.equal(state.arrays.to_torch_state_dict()["weight"], torch.full((2, 2), 6.0))
    assert 103 not in state.strategy.departed
    assert all(2 in r.clients for r in update_log(state).rounds())
