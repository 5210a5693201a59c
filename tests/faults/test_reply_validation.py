"""The server reads nothing it has not checked: phase replies (``server.replies``), FedAvg
round weights of clients whose update was left out, and evaluate replies."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from torch import nn

from faults.harness import server_identity
from fedunlearn import protocol
from fedunlearn.config import DataConfig, FederationConfig
from server.replies import (
    EXPECT_COMMIT,
    EXPECT_FISHER,
    EXPECT_FORGET,
    EXPECT_REMAIN,
    EXPECT_VERIFY,
    Expect,
    reply_problem,
)
from server.strategy import UnlearningFedAvg

pytestmark = pytest.mark.faults


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


MODEL = WithBuffer()
STATE = MODEL.state_dict()  # linear.weight/bias, norm.weight/bias/running_mean/running_var, num_batches_tracked
SERVER = SimpleNamespace(strategy=SimpleNamespace(reference_keys=STATE), model=MODEL)
FLOATS = {k: torch.zeros_like(v) for k, v in STATE.items() if v.is_floating_point()}
PARAMS = {k: torch.zeros_like(p) for k, p in MODEL.named_parameters()}


def reply(
    arrays: dict[str, torch.Tensor] | None = None, metrics: dict[str, Any] | None = None, receipt: str | None = None
) -> Message:
    content = RecordDict()
    if arrays is not None:
        content[protocol.ARRAYS] = ArrayRecord(arrays)
    if metrics is not None:
        content[protocol.METRICS] = MetricRecord(metrics)
    if receipt is not None:
        content[protocol.RECEIPT] = ConfigRecord({protocol.RECEIPT_JSON: receipt})
    with server_identity():
        instruction = Message(RecordDict(), dst_node_id=7, message_type="train.forget")
    return Message(content, reply_to=instruction)


FORGET_METRICS = {protocol.PASSED: 0, f"{protocol.CHECK_PREFIX}{protocol.FA}": 0.9, protocol.NUM_RETAINED: 1}


def test_well_formed_replies_pass() -> None:
    assert reply_problem(reply(FLOATS, FORGET_METRICS), SERVER, EXPECT_FORGET) is None  # type: ignore[arg-type]
    assert reply_problem(reply(FLOATS, {protocol.NUM_EXAMPLES: 0}), SERVER, EXPECT_REMAIN) is None  # type: ignore[arg-type]
    assert reply_problem(reply(PARAMS, {protocol.NUM_EXAMPLES: 5}), SERVER, EXPECT_FISHER) is None  # type: ignore[arg-type]
    committed = {protocol.VERIFIED: 1, protocol.PURGED_STEPS: 3}
    assert reply_problem(reply(None, committed, "{}"), SERVER, EXPECT_COMMIT) is None  # type: ignore[arg-type]
    refused = {protocol.VERIFIED: 0, f"{protocol.CHECK_PREFIX}{protocol.FA}": 0.9}  # no receipt: nothing committed
    assert reply_problem(reply(None, refused), SERVER, EXPECT_COMMIT) is None  # type: ignore[arg-type]
    verdict = {protocol.PASSED: 1, protocol.FA: 0.1, protocol.RA: 0.9}
    assert reply_problem(reply(None, verdict), SERVER, EXPECT_VERIFY) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "expect", "text"),
    [
        (lambda: reply(None, FORGET_METRICS), EXPECT_FORGET, "no 'arrays' record"),
        (lambda: reply({**FLOATS, "evil": torch.zeros(2)}, FORGET_METRICS), EXPECT_FORGET, "unexpected entries: evil"),
        (
            lambda: reply({k: v for k, v in FLOATS.items() if k != "linear.weight"}, FORGET_METRICS),
            EXPECT_FORGET,
            "missing entries: linear.weight",
        ),
        (
            lambda: reply({**FLOATS, "linear.bias": torch.zeros(3)}, FORGET_METRICS),
            EXPECT_FORGET,
            "linear.bias: shape (3,)",
        ),
        (
            lambda: reply({**FLOATS, "linear.bias": torch.tensor([0.0, math.inf])}, FORGET_METRICS),
            EXPECT_FORGET,
            "NaN or Inf",
        ),
        (lambda: reply(FLOATS, {protocol.PASSED: 0}), EXPECT_FORGET, "['num-retained'] missing"),
        (lambda: reply(FLOATS, {protocol.NUM_RETAINED: 1}), EXPECT_FORGET, "['passed'] missing"),
        (lambda: reply(FLOATS, {**FORGET_METRICS, "check-FA": math.nan}), EXPECT_FORGET, "finite numbers"),
        (lambda: reply(FLOATS, {**FORGET_METRICS, "x": [1, 2, 3]}), EXPECT_FORGET, "finite numbers"),
        (lambda: reply(FLOATS, {protocol.NUM_EXAMPLES: 4}), EXPECT_FISHER, "unexpected entries: norm.running_mean"),
        (lambda: reply(None, {protocol.VERIFIED: 1}, "not json"), EXPECT_COMMIT, "no readable 'receipt' record"),
        (lambda: reply(None, {protocol.VERIFIED: 1}, "[1, 2]"), EXPECT_COMMIT, "no readable 'receipt' record"),
        (lambda: reply(None, {protocol.VERIFIED: 1}), EXPECT_COMMIT, "no readable 'receipt' record"),
        (lambda: reply(None, {}, "{}"), EXPECT_COMMIT, "['verified'] missing"),
        (lambda: reply(None, {protocol.FA: 0.1}), EXPECT_VERIFY, "['passed'] missing"),
        (lambda: reply({"evil": torch.zeros(2)}), Expect(), "unexpected entries: evil"),
    ],
)
def test_malformed_replies_are_named_and_left_out(make: Any, expect: Expect, text: str) -> None:
    problem = reply_problem(make(), SERVER, expect)  # type: ignore[arg-type]
    assert problem is not None and text in problem


def test_error_replies_name_the_first_line_of_the_reason() -> None:
    with server_identity():
        instruction = Message(RecordDict(), dst_node_id=7, message_type="train.forget")
    error = Message(Error(code=100, reason="Boom: first\nsecond"), reply_to=instruction)
    assert reply_problem(error, SERVER, EXPECT_FORGET) == "error reply: Boom: first"  # type: ignore[arg-type]


# ------------------------------------------------------------------ FedAvg rounds
def _strategy() -> UnlearningFedAvg:
    config = FederationConfig(data=DataConfig(num_clients=3))
    strategy = UnlearningFedAvg(config, reference=ArrayRecord(STATE))
    strategy.partition_of = {101: 0, 102: 1, 103: 2}
    return strategy


def _train_reply(node: int, value: float, count: int) -> Message:
    with server_identity():
        instruction = Message(RecordDict(), dst_node_id=node, message_type=protocol.TRAIN)
    state = {k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in STATE.items()}
    content = RecordDict(
        {
            protocol.ARRAYS: ArrayRecord(state),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count, protocol.TRAIN_LOSS: 1.0}),
        }
    )
    return Message(content, reply_to=instruction)


def test_a_left_out_client_gets_weight_zero_for_the_round() -> None:
    # Prepare: three nodes trained; 103 sent NaN, 102 never answered
    strategy = _strategy()
    strategy.last_train_nodes = [101, 102, 103]
    replies = [_train_reply(101, 1.0, 30), _train_reply(103, math.nan, 10)]

    # Execute
    arrays, _ = strategy.aggregate_train(4, replies)

    # Assert: its stored deltas of round 4 must never be subtracted from the model
    assert arrays is not None
    assert {p: w[4] for p, w in strategy.round_weights.items()} == {0: 1.0, 1: 0.0, 2: 0.0}  # by partition
    assert json.loads(json.dumps(dict(strategy.weights_record(102)))) == {"rounds": [4], "weights": [0.0]}


def test_malformed_evaluate_replies_are_left_out_instead_of_failing_the_round() -> None:
    # Prepare
    strategy = _strategy()

    def evaluation(node: int, metrics: dict[str, Any]) -> Message:
        with server_identity():
            instruction = Message(RecordDict(), dst_node_id=node, message_type=protocol.EVALUATE)
        return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), reply_to=instruction)

    good = {protocol.NUM_EXAMPLES: 10, protocol.EVAL_LOSS: 1.0, protocol.EVAL_ACCURACY: 0.5}
    replies = [
        evaluation(101, good),
        evaluation(102, {**good, protocol.EVAL_ACCURACY: math.nan}),
        evaluation(103, {**good, "extra": 1.0}),
        evaluation(101, {**good, protocol.EVAL_ACCURACY: 0.7}),
    ]

    # Execute
    metrics = strategy.aggregate_evaluate(2, replies)

    # Assert: the two good replies are averaged (0.6); NaN and extra-key replies left out
    assert metrics is not None and math.isclose(float(metrics[protocol.EVAL_ACCURACY]), 0.6)  # type: ignore[arg-type]
