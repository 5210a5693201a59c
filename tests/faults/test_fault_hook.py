"""The test-only fault hook (``fedunlearn.faults`` + ``clients.common.fault_injection_mod``):
plans parse strictly, nothing happens without a plan, and a plan without the enabling token
is refused loudly instead of being ignored or applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from faults.harness import LocalGrid, config_of, node_contexts, server_identity, tree_bytes
from fedunlearn import faults, protocol
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.models import build_model
from fedunlearn.run_config import config_to_flat
from server.strategy import UnlearningFedAvg

pytestmark = pytest.mark.faults

ENABLED = {faults.ENABLE_ENV: faults.ENABLE_TOKEN}


def test_plans_parse_into_rules() -> None:
    rules = faults.parse_plan("forget:error:2, remain:nan:1:3,verify:hang=1.5:1")
    assert rules == (
        faults.FaultRule("forget", "error", 2),
        faults.FaultRule("remain", "nan", 1, 3),
        faults.FaultRule("verify", "hang", 1, 0, 1.5),
    )
    assert [rules[1].applies(n) for n in range(5)] == [False, False, False, True, False]


@pytest.mark.parametrize(
    "plan",
    [
        "forget:error",
        "forgot:error:1",
        "forget:explode:1",
        "forget:error:0",
        "forget:error:1:-1",
        "forget:hang=0:1",
        "forget:hang=x:1",
        "a:b:c:d:e",
    ],
)
def test_malformed_plans_are_refused_naming_the_entry(plan: str) -> None:
    with pytest.raises(ConfigError) as caught:
        faults.parse_plan(f"train:error:1,{plan}")
    assert repr(plan) in str(caught.value) and "train:error:1" not in str(caught.value)


def test_a_plan_without_the_token_is_refused_and_none_means_no_faults() -> None:
    assert faults.plan_text_for({}, 0, environ={}) is None
    assert faults.plan_text_for({}, 0, environ=ENABLED) is None
    for environ in ({}, {faults.ENABLE_ENV: "1"}, {faults.ENABLE_ENV: "true"}):
        with pytest.raises(FedUnlearnError, match="test hook"):
            faults.plan_text_for({faults.NODE_CONFIG_KEY: "forget:error:1"}, 0, environ=environ)
    env = {**ENABLED, faults.PLAN_ENV: "0=train:nan:1; 2=forget:error:2"}
    assert faults.plan_text_for({}, 2, environ=env) == "forget:error:2"
    assert faults.plan_text_for({}, 1, environ=env) is None
    assert faults.plan_text_for({faults.NODE_CONFIG_KEY: "commit:lost:1"}, 2, environ=env) == "commit:lost:1"


def test_counts_survive_a_new_injector(tmp_path: Path) -> None:
    rules = faults.parse_plan("forget:error:1:1")
    first = faults.FaultInjector(rules, tmp_path)
    assert first.next_fault("forget") is None and first.next_fault("remain") is None
    second = faults.FaultInjector(rules, tmp_path)  # e.g. after the node restarted
    assert second.next_fault("forget") == rules[0] and second.next_fault("forget") is None


@pytest.mark.parametrize("action", faults.AFTER_ACTIONS[1:])
def test_array_corruptions_break_exactly_what_they_say(action: str) -> None:
    arrays = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.array([5], np.int64)}
    out = faults.corrupt_arrays(arrays, action)
    assert np.array_equal(arrays["w"], np.ones((2, 3)))  # inputs unchanged
    check = {
        "nan": lambda: np.isnan(out["w"]).sum() == 1 and np.isnan(out["b"]).sum() == 1,
        "inf": lambda: np.isinf(out["w"]).sum() == 1,
        "shape": lambda: out["w"].shape == (5,) and out["n"].shape == (1,),
        "extra-key": lambda: set(out) == {"w", "b", "n", faults.EXTRA_KEY},
        "missing-key": lambda: set(out) == {"w", "n"} or set(out) == {"b", "n"},
        "garbage": lambda: np.isfinite(out["w"]).all() and np.abs(out["w"]).min() > 100,
    }[action]
    assert check()


def test_a_node_with_a_plan_but_no_token_answers_every_message_with_the_cause(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a fault plan left in a node config, fault injection not enabled
    monkeypatch.delenv(faults.ENABLE_ENV, raising=False)
    config = config_of(
        {
            "data.dataset": "digits",
            "train.model": "mlp",
            "data.num-clients": 1,
            "data.samples-per-client": 40,
            "run.state-root": str(tmp_path / "state"),
        }
    )
    strategy = UnlearningFedAvg(
        config,
        reference=ArrayRecord(build_model("mlp", input_shape=(1, 28, 28), num_classes=10).state_dict()),
        flat_config=config_to_flat(config),
    )
    from clients.client_app import app

    grid = LocalGrid(app, node_contexts(1, plans={0: "train:nan:1"}))

    # Execute
    with server_identity():
        message = strategy.build_message(100, protocol.QUERY_STATUS, arrays=None, config=ConfigRecord())
        (reply,) = grid.send_and_receive([message])

    # Assert: refused loudly; the node's state is untouched (not even created)
    assert reply.has_error() and faults.ENABLE_ENV in (reply.error.reason or "")
    assert not (tmp_path / "state").exists() or tree_bytes(tmp_path / "state") == {}
