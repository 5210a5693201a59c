"""Faults in the unlearning phase, on the project's real ServerApp and ClientApp (in-process
transport, see ``harness.py``; the same plans on Ray are in ``test_simulation_faults.py``).

Every run files one sample-level deletion on client 1 after round 1 and scripts faults with
a test fault plan (``fedunlearn.faults``). What must hold: a failed phase never changes the
global model (digest before == after), the client keeps the request pending and records the
server's reason, invalid replies are left out, and the request is served once the fault is
gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clients.client_app import app as client_app
from faults.harness import LocalGrid, node_contexts, run_in_process, unlearning_events
from fedunlearn import faults
from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionQueue

pytestmark = pytest.mark.faults

REQUEST = "sched-r1-c1-sample-10p0"
Outcome = tuple[Path, dict[str, Any], LocalGrid]
BASE = {
    "dataset": "digits",
    "model": "mlp",
    "num-clients": 3,
    "samples-per-client": 150,
    "test-samples": 200,
    "num-server-rounds": 3,
    "deletion-schedule": "1:1:sample:10",
    "phase-retries": 1,
    "batch-size": 32,
    "lr": 0.1,
    "unlearn-outer-steps": 2,
    "unlearn-remain-steps": 2,
    "client-threads": 1,
}


def run(tmp: Path, plans: dict[int, str], **overrides: Any) -> tuple[dict[str, Any], LocalGrid]:
    values = {**BASE, "out-dir": str(tmp), "state-root": str(tmp / "state"), **overrides}
    grid = LocalGrid(client_app, node_contexts(3, plans=plans))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(faults.ENABLE_ENV, faults.ENABLE_TOKEN)
        results = run_in_process(FederationConfig.from_run_config(values), grid)
    return results, grid


def request_on_client(tmp: Path, partition: int = 1) -> Any:
    return DeletionQueue(tmp / "state" / f"client-{partition}").get(REQUEST)


def replied(event: dict[str, Any], name: str) -> int:
    return next(x["replied"] for x in event["stats"]["exchanges"] if x["name"] == name)


def assert_rolled_back(event: dict[str, Any]) -> None:
    assert event["status"] == "deferred" and event["reason"]
    assert event["model_before"] == event["model_after"]  # the global model was never touched
    assert event["receipt"] is None


# ------------------------------------------------------------------ corrupted replies
@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("corrupted")
    plans = {
        1: "forget:nan:1,forget:inf:1:1,forget:shape:1:2,forget:extra-key:1:3,forget:missing-key:1:4",
        0: "remain:shape:1,remain:missing-key:1:1",
        2: "train:nan:1,evaluate:nan:1",
    }
    results, grid = run(tmp, plans)
    return tmp, results, grid


def test_nonfinite_or_misshapen_corrections_defer_the_phase_without_touching_the_model(
    corrupted: Outcome,
) -> None:
    _, results, _ = corrupted
    first, second, third = unlearning_events(results)
    assert_rolled_back(first)
    assert "NaN or Inf" in first["reason"]  # tries 1 and 2: NaN, then +Inf
    assert_rolled_back(second)
    assert "shape" in second["reason"] or "unexpected entries" in second["reason"]
    assert third["status"] == "served" and third["round"] == 3
    assert third["model_before"] != third["model_after"]


def test_invalid_remain_replies_are_left_out_of_the_slow_step(corrupted: Outcome) -> None:
    _, results, _ = corrupted
    served = unlearning_events(results)[-1]
    assert replied(served, "slow 1/2") == 2  # client 0 sent a wrong shape, then a missing entry
    assert replied(served, "slow 2/2") == 3


def test_served_request_records_the_failed_attempts_on_the_client(corrupted: Outcome) -> None:
    tmp, results, _ = corrupted
    request = request_on_client(tmp)
    assert request.status == "served" and request.attempts == 2 and request.last_error is None
    receipt = json.loads((tmp / "receipts" / f"{REQUEST}.json").read_text())
    assert receipt["model_digest_after"] == unlearning_events(results)[-1]["model_after"]


def test_invalid_train_and_evaluate_replies_are_left_out_and_get_weight_zero(
    corrupted: Outcome,
) -> None:
    tmp, results, _ = corrupted
    first_round = results["rounds"][0]
    assert first_round["failures"] == 1 and sorted(c["partition_id"] for c in first_round["clients"]) == [0, 1]
    manifest = json.loads(next((tmp / "state" / "client-2" / "history").glob("*/manifest.json")).read_text())
    weights = {row["round"]: row["weight"] for row in manifest["rounds"]}
    assert weights[1] == 0.0 and weights[2] > 0.0  # its NaN update of round 1 never reached the model


# ------------------------------------------------------------------ dropouts, timeouts, lost acks
@pytest.fixture(scope="module")
def dropouts(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("dropouts")
    plans = {
        1: "forget:crash:2,verify:hang=7:1,verify:error:1:1,commit:lost:2:2",
        2: "remain:crash:2",
    }
    results, grid = run(tmp, plans, **{"round-timeout": 5.0})
    return tmp, results, grid


def test_dropout_and_timeout_defer_and_the_request_is_served_later(
    dropouts: Outcome,
) -> None:
    tmp, results, _ = dropouts
    events = unlearning_events(results)
    assert [(e["round"], e["status"]) for e in events] == [
        (1, "deferred"),
        (2, "deferred"),
        (3, "unconfirmed"),
        (3, "served"),
    ]
    assert_rolled_back(events[0])
    assert "crashed" in events[0]["reason"]  # the ClientApp raised (a dying client)
    assert_rolled_back(events[1])
    assert events[1]["reason"].startswith("verify") and "FaultInjected" in events[1]["reason"]
    assert replied(events[1], "slow 1/2") == 2  # client 2 crashed twice in the slow step


def test_lost_commit_ack_is_confirmed_later_without_serving_twice(dropouts: Outcome) -> None:
    tmp, results, grid = dropouts
    unconfirmed, late = unlearning_events(results)[2:]
    assert unconfirmed["model_before"] != unconfirmed["model_after"]  # applied after verification
    assert late["reason"] == "confirmed late" and late["receipt"]["request_id"] == REQUEST
    request = request_on_client(tmp)
    assert request.status == "served" and request.attempts == 2
    forget_messages = [m for m in grid.sent if m.metadata.message_type == "train.forget"]
    assert len(forget_messages) == 2 + 2 + 2  # R1: 2 crashed tries; R2 and R3: one per outer step, never a 4th phase
    assert results["summary"]["unconfirmed_requests"] == [] and results["summary"]["pending_requests"] == {}


# ------------------------------------------------------------------ verification failure
def test_failed_verification_rolls_back_and_keeps_the_request_pending_with_the_reason(tmp_path: Path) -> None:
    # Prepare: the forgetting client's corrections are finite but absurd, TA may fall by 5 points at most
    plans = {1: "forget:garbage:99"}

    # Execute
    results, _ = run(tmp_path, plans, **{"num-server-rounds": 2, "unlearn-max-ta-drop": 0.05})

    # Assert
    events = unlearning_events(results)  # rounds 1 and 2, and once more after the last round
    assert [(e["round"], e["status"]) for e in events] == [(1, "deferred"), (2, "deferred"), (2, "deferred")]
    for event in events:
        assert_rolled_back(event)
        assert event["reason"].startswith("verification failed: test accuracy fell")
    request = request_on_client(tmp_path)
    assert request.status == "pending" and request.attempts == 3
    assert request.last_error.startswith("round 2: verification failed: test accuracy fell")
    assert results["summary"]["pending_requests"] == {"1": [REQUEST]}
    assert not (tmp_path / "state" / "client-1" / "receipts" / f"{REQUEST}.json").exists()
