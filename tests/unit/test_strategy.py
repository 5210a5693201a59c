"""UnlearningFedAvg with mocked replies: hand-computed FedAvg, weights, bad replies, messages, sampling.

Replies are real Flower ``Message`` objects built as replies to the strategy's own instruction
messages. Constructing an instruction message reads the process-wide ``TaskIdentity``, which
Flower's runtime sets before app code runs; the ``task_identity`` fixture stands in for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.config import unflatten_dict
from flwr.supercore.task_identity import TaskIdentity

from fedunlearn import protocol
from fedunlearn.config import DataConfig, FederationConfig, RunSettings, TrainConfig
from fedunlearn.run_config import config_from_sections, config_to_flat
from server.strategy import UnlearningFedAvg

NODES = {101: 0, 102: 1, 103: 2}  # Flower node id -> partition id


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """The identity Flower's runtime gives the ServerApp process (restored afterwards)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class FakeGrid:
    """The part of ``flwr.serverapp.Grid`` the strategy uses: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = list(node_ids)
        self.calls = 0

    def get_node_ids(self) -> list[int]:
        self.calls += 1
        return list(self.node_ids)


def _state(scale: float) -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.tensor([[1.0, -2.0], [0.5, 4.0]]) * scale,
        "fc.bias": torch.tensor([scale, 10.0 - scale]),
    }


def _strategy(
    nodes: dict[int, int] = NODES, *, seed: int = 0, fraction: float = 1.0, fraction_evaluate: float = 1.0
) -> UnlearningFedAvg:
    config = FederationConfig(
        run=RunSettings(seed=seed),
        data=DataConfig(num_clients=len(nodes)),
        train=TrainConfig(fraction=fraction, fraction_evaluate=fraction_evaluate),
    )
    strategy = UnlearningFedAvg(config, reference=ArrayRecord(_state(0.0)), flat_config=config_to_flat(config))
    strategy.lineage = "run-test"
    strategy.partition_of.update(nodes)
    return strategy


def _instruction(node_id: int, strategy: UnlearningFedAvg) -> Message:
    return strategy.build_message(node_id, protocol.TRAIN, arrays=ArrayRecord(_state(0.0)), config=ConfigRecord())


def _reply(
    node_id: int,
    strategy: UnlearningFedAvg,
    *,
    state: dict[str, torch.Tensor] | None = None,
    metrics: dict[str, float] | None = None,
    extra: RecordDict | None = None,
) -> Message:
    default_metrics = {protocol.NUM_EXAMPLES: 10, protocol.TRAIN_LOSS: 1.0}
    content = RecordDict(
        {
            protocol.ARRAYS: ArrayRecord(state if state is not None else _state(1.0)),
            protocol.METRICS: MetricRecord(metrics if metrics is not None else default_metrics),
        }
    )
    for key, record in (extra or {}).items():
        content[key] = record
    return Message(content, reply_to=_instruction(node_id, strategy))


def _good_replies(strategy: UnlearningFedAvg) -> list[Message]:
    return [
        _reply(101, strategy, state=_state(1.0), metrics={protocol.NUM_EXAMPLES: 10, protocol.TRAIN_LOSS: 2.0}),
        _reply(102, strategy, state=_state(4.0), metrics={protocol.NUM_EXAMPLES: 30, protocol.TRAIN_LOSS: 1.0}),
        _reply(103, strategy, state=_state(-2.0), metrics={protocol.NUM_EXAMPLES: 60, protocol.TRAIN_LOSS: 0.5}),
    ]


# ---------------------------------------------------------------------------- aggregation


def test_aggregate_train_is_hand_computed_fedavg_and_records_weights() -> None:
    # Prepare
    strategy = _strategy()

    # Execute
    arrays, metrics = strategy.aggregate_train(1, _good_replies(strategy))

    # Assert
    # weights 10/100, 30/100, 60/100; the state is linear in the scale: 0.1*1 + 0.3*4 + 0.6*(-2) = 0.1
    assert arrays is not None and metrics is not None
    aggregated = arrays.to_torch_state_dict()
    assert torch.allclose(aggregated["fc.weight"], torch.tensor([[0.1, -0.2], [0.05, 0.4]]))
    # bias[1] = 0.1*(10-1) + 0.3*(10-4) + 0.6*(10+2) = 0.9 + 1.8 + 7.2 = 9.9
    assert torch.allclose(aggregated["fc.bias"], torch.tensor([0.1, 9.9]))
    # train loss 0.1*2.0 + 0.3*1.0 + 0.6*0.5 = 0.8
    assert math.isclose(float(metrics[protocol.TRAIN_LOSS]), 0.8)  # type: ignore[arg-type]
    assert strategy.round_weights == {  # by partition id, not Flower node id
        0: {1: pytest.approx(0.1)},
        1: {1: pytest.approx(0.3)},
        2: {1: pytest.approx(0.6)},
    }
    assert [m.metadata.src_node_id for m in strategy.last_train_replies] == [101, 102, 103]


def test_round_weights_accumulate_per_round_and_node() -> None:
    # Prepare
    strategy = _strategy()
    strategy.aggregate_train(1, _good_replies(strategy))
    second = [
        _reply(101, strategy, metrics={protocol.NUM_EXAMPLES: 25, protocol.TRAIN_LOSS: 1.0}),
        _reply(103, strategy, metrics={protocol.NUM_EXAMPLES: 75, protocol.TRAIN_LOSS: 1.0}),
    ]

    # Execute
    strategy.aggregate_train(2, second)

    # Assert
    assert strategy.round_weights[0] == {1: pytest.approx(0.1), 2: pytest.approx(0.25)}
    assert strategy.round_weights[1] == {1: pytest.approx(0.3)}
    assert strategy.round_weights[2] == {1: pytest.approx(0.6), 2: pytest.approx(0.75)}


def _bad_reply(kind: str, strategy: UnlearningFedAvg) -> Message:
    if kind == "error":
        return Message(Error(code=1, reason="client crashed"), reply_to=_instruction(103, strategy))
    if kind == "nan":
        state = _state(1.0)
        state["fc.weight"][0, 0] = float("nan")
        return _reply(103, strategy, state=state)
    if kind == "wrong-shape":
        return _reply(103, strategy, state={**_state(1.0), "fc.bias": torch.zeros(3)})
    if kind == "missing-key":
        return _reply(103, strategy, state={"fc.weight": _state(1.0)["fc.weight"]})
    if kind == "extra-array-record":
        return _reply(103, strategy, extra=RecordDict({"other": ArrayRecord({"x": Array(np.zeros(2))})}))
    metrics = {
        "no-num-examples": {protocol.TRAIN_LOSS: 1.0},
        "nan-num-examples": {protocol.NUM_EXAMPLES: float("nan"), protocol.TRAIN_LOSS: 1.0},
        "negative-num-examples": {protocol.NUM_EXAMPLES: -5, protocol.TRAIN_LOSS: 1.0},
        "list-num-examples": {protocol.NUM_EXAMPLES: [1, 2], protocol.TRAIN_LOSS: 1.0},
    }[kind]
    return _reply(103, strategy, metrics=metrics)  # type: ignore[arg-type]


BAD_KINDS = [
    "error",
    "nan",
    "wrong-shape",
    "missing-key",
    "extra-array-record",
    "no-num-examples",
    "nan-num-examples",
    "negative-num-examples",
    "list-num-examples",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_reply_is_left_out_and_the_rest_aggregated(kind: str) -> None:
    # Prepare
    strategy = _strategy()
    replies = _good_replies(strategy)[:2] + [_bad_reply(kind, strategy)]

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert: FedAvg of 101 (n=10, scale 1) and 102 (n=30, scale 4): 0.25*1 + 0.75*4 = 3.25
    assert arrays is not None and metrics is not None
    aggregated = arrays.to_torch_state_dict()
    assert torch.allclose(aggregated["fc.weight"], _state(3.25)["fc.weight"])
    assert torch.isfinite(aggregated["fc.weight"]).all()
    assert strategy.round_weights == {0: {1: pytest.approx(0.25)}, 1: {1: pytest.approx(0.75)}}
    assert [m.metadata.src_node_id for m in strategy.last_train_replies] == [101, 102]


@pytest.mark.parametrize("kind", ["error", "nan", "no-num-examples"])
def test_reply_problems_explain_why(kind: str) -> None:
    # Prepare
    strategy = _strategy()

    # Execute
    problems = strategy.reply_problems(_bad_reply(kind, strategy))

    # Assert
    expected = {
        "error": "client crashed",
        "nan": "fc.weight: contains NaN or Inf",
        "no-num-examples": protocol.NUM_EXAMPLES,
    }
    assert len(problems) == 1 and expected[kind] in problems[0]


def test_only_bad_replies_give_no_aggregate_and_no_weights() -> None:
    # Prepare
    strategy = _strategy()
    replies = [_bad_reply("error", strategy), _bad_reply("nan", strategy)]

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert
    assert arrays is None and metrics is None
    assert strategy.round_weights == {} and strategy.last_train_replies == []


def test_aggregate_evaluate_leaves_out_replies_without_examples() -> None:
    # Prepare
    strategy = _strategy()
    replies = [
        _reply(101, strategy, metrics={protocol.NUM_EXAMPLES: 20, protocol.EVAL_ACCURACY: 0.5}),
        _reply(102, strategy, metrics={protocol.NUM_EXAMPLES: 60, protocol.EVAL_ACCURACY: 0.9}),
        _reply(103, strategy, metrics={protocol.NUM_EXAMPLES: 0, protocol.EVAL_ACCURACY: 0.0}),
        Message(RecordDict({protocol.STATUS: ConfigRecord({"x": 1})}), reply_to=_instruction(103, strategy)),
    ]

    # Execute
    metrics = strategy.aggregate_evaluate(1, replies)

    # Assert: 0.25*0.5 + 0.75*0.9 = 0.8
    assert metrics is not None
    assert math.isclose(float(metrics[protocol.EVAL_ACCURACY]), 0.8)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- messages


def test_configure_train_messages_carry_federation_config_round_and_node_weights() -> None:
    # Prepare
    strategy = _strategy(seed=4)
    strategy.aggregate_train(1, _good_replies(strategy))
    flat = config_to_flat(strategy.config)
    config = ConfigRecord({"lr-scale": 0.5})
    arrays = ArrayRecord(_state(2.0))

    # Execute
    messages = list(strategy.configure_train(2, arrays, config, FakeGrid(list(NODES))))

    # Assert
    assert [m.metadata.dst_node_id for m in messages] == [101, 102, 103]
    assert dict(config) == {"lr-scale": 0.5}  # the caller's record is not mutated
    expected_weights = {101: 0.1, 102: 0.3, 103: 0.6}
    for message in messages:
        content = message.content
        assert message.metadata.message_type == protocol.TRAIN
        assert dict(content[protocol.CONFIG]) == {
            "lr-scale": 0.5,
            protocol.SERVER_ROUND: 2,
            protocol.LINEAGE: "run-test",
        }
        federation = dict(content[protocol.FEDERATION])
        assert federation == flat
        assert config_from_sections(unflatten_dict(federation)) == strategy.config
        weights = content[protocol.ROUND_WEIGHTS]
        assert list(weights[protocol.ROUNDS]) == [1]  # type: ignore[arg-type]
        assert list(weights[protocol.WEIGHTS]) == [pytest.approx(expected_weights[message.metadata.dst_node_id])]  # type: ignore[arg-type]
        assert torch.equal(content[protocol.ARRAYS].to_torch_state_dict()["fc.bias"], _state(2.0)["fc.bias"])


def test_first_round_messages_carry_empty_weights() -> None:
    # Prepare
    strategy = _strategy()

    # Execute
    messages = list(strategy.configure_train(1, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid(list(NODES))))

    # Assert
    assert len(messages) == 3
    for message in messages:
        weights = message.content[protocol.ROUND_WEIGHTS]
        assert list(weights[protocol.ROUNDS]) == [] and list(weights[protocol.WEIGHTS]) == []  # type: ignore[arg-type]


def test_configure_evaluate_is_empty_when_fraction_evaluate_is_zero() -> None:
    # Prepare
    strategy = _strategy(fraction_evaluate=0.0)

    # Execute
    messages = list(strategy.configure_evaluate(1, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid(list(NODES))))

    # Assert
    assert messages == []


def test_configure_evaluate_messages_are_evaluate_type_with_weights() -> None:
    # Prepare
    strategy = _strategy()
    strategy.aggregate_train(1, _good_replies(strategy))

    # Execute
    messages = list(strategy.configure_evaluate(1, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid(list(NODES))))

    # Assert
    assert [m.metadata.message_type for m in messages] == [protocol.EVALUATE] * 3
    assert all(list(m.content[protocol.ROUND_WEIGHTS][protocol.ROUNDS]) == [1] for m in messages)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- sampling

SIX = {200 + k: k for k in range(6)}


def _sampled_partitions(strategy: UnlearningFedAvg, server_round: int, nodes: dict[int, int]) -> list[int]:
    messages = strategy.configure_train(server_round, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid(list(nodes)))
    return sorted(nodes[m.metadata.dst_node_id] for m in messages)


def test_seeded_sampling_is_reproducible_for_same_seed_and_round() -> None:
    # Prepare: a rerun (e.g. the retrain baseline) where Flower gave the nodes other ids
    renamed = {9000 + pid: pid for pid in SIX.values()}
    first, rerun = _strategy(SIX, seed=3, fraction=0.5), _strategy(renamed, seed=3, fraction=0.5)

    # Execute
    picks = [_sampled_partitions(first, r, SIX) for r in range(1, 9)]
    repeat = [_sampled_partitions(first, r, SIX) for r in range(1, 9)]
    rerun_picks = [_sampled_partitions(rerun, r, renamed) for r in range(1, 9)]

    # Assert
    assert all(len(p) == 3 and len(set(p)) == 3 for p in picks)
    assert picks == repeat == rerun_picks
    assert len({tuple(p) for p in picks}) > 1  # rounds differ


def test_sampling_depends_on_seed() -> None:
    # Prepare
    a, b = _strategy(SIX, seed=0, fraction=0.5), _strategy(SIX, seed=1, fraction=0.5)

    # Execute
    picks_a = [_sampled_partitions(a, r, SIX) for r in range(1, 9)]
    picks_b = [_sampled_partitions(b, r, SIX) for r in range(1, 9)]

    # Assert
    assert picks_a != picks_b


def test_sampling_skips_disconnected_departed_and_unknown_nodes() -> None:
    # Prepare
    strategy = _strategy(SIX)
    strategy.depart(203)
    grid = FakeGrid([200, 201, 202, 203, 204, 999])  # 205 is offline, 999 never announced a partition

    # Execute
    messages = list(strategy.configure_train(1, ArrayRecord(_state(0.0)), ConfigRecord(), grid))

    # Assert
    assert [m.metadata.dst_node_id for m in messages] == [200, 201, 202, 204]
    assert grid.calls == 1  # on a real Grid every call is a round trip


# -------------------------------------------------------------- partition ids and reply order


def test_replies_are_aggregated_in_partition_order_whatever_their_arrival_order() -> None:
    # Prepare
    ordered, shuffled = _strategy(), _strategy()
    replies = _good_replies(shuffled)

    # Execute
    expected, _ = ordered.aggregate_train(1, _good_replies(ordered))
    arrays, _ = shuffled.aggregate_train(1, [replies[2], replies[0], replies[1]])

    # Assert: the same sum in the same order, so the very same floats
    assert expected is not None and arrays is not None
    for key, value in expected.to_torch_state_dict().items():
        assert torch.equal(arrays.to_torch_state_dict()[key], value)
    assert [m.metadata.src_node_id for m in shuffled.last_train_replies] == [101, 102, 103]


def test_a_node_sent_a_train_message_whose_reply_is_unusable_gets_weight_zero() -> None:
    # Prepare
    strategy = _strategy()
    list(strategy.configure_train(1, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid(list(NODES))))
    replies = _good_replies(strategy)[:2] + [_bad_reply("nan", strategy)]

    # Execute
    strategy.aggregate_train(1, replies)

    # Assert
    assert strategy.round_weights[2] == {1: 0.0}
    assert strategy.trained_rounds(103) == [] and strategy.trained_rounds(101) == [1]


def test_round_weights_and_departures_follow_the_partition_when_node_ids_change() -> None:
    # Prepare: a resumed run, where Flower gave the same partitions new node ids
    strategy = _strategy()
    strategy.aggregate_train(1, _good_replies(strategy))
    strategy.depart(102)
    strategy.partition_of = {501: 0, 502: 1, 503: 2}

    # Execute
    weights = strategy.weights_record(503)
    messages = list(strategy.configure_train(2, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid([501, 502, 503])))

    # Assert
    assert list(weights[protocol.ROUNDS]) == [1]  # type: ignore[arg-type]
    assert list(weights[protocol.WEIGHTS]) == [pytest.approx(0.6)]  # type: ignore[arg-type]
    assert strategy.trained_rounds(501) == [1]
    assert strategy.departed == {502} and strategy.departed_partitions == {1}
    assert [m.metadata.dst_node_id for m in messages] == [501, 503]


def test_every_message_carries_the_lineage() -> None:
    # Prepare
    strategy = _strategy()

    # Execute
    status = strategy.build_message(101, protocol.QUERY_STATUS, arrays=None, config=ConfigRecord())
    evaluate = list(strategy.configure_evaluate(1, ArrayRecord(_state(0.0)), ConfigRecord(), FakeGrid(list(NODES))))

    # Assert
    assert status.content[protocol.CONFIG][protocol.LINEAGE] == "run-test"
    assert protocol.ARRAYS not in status.content.array_records
    assert all(m.content[protocol.CONFIG][protocol.LINEAGE] == "run-test" for m in evaluate)
