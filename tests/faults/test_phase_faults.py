"""Faults in the unlearning phase, on the project's real ServerApp and ClientApp (in-process
transport, see ``harness.py``; the same kind of plan on Ray is in ``test_simulation.py``).

Every run trains round 1, then client 1's data officer files a class-level deletion on the
client's disk (as ``fedunlearn forget`` does), and the ServerApp resumes from its checkpoint
and serves it, while a test fault plan (``fedunlearn.faults``) scripts faults. The federation
is split by class (each class lives on one client), so the deleted class is learnt from
client 1 alone: its criterion (``fedunlearn.criterion``: FA of the class at most
``unlearn.class-target-fa``) fails before the phase and holds once label-flip has run, far
from the threshold both times. What must hold: a failed phase never changes the global model
(digest before == after), invalid replies are left out, a transient fault (a drop-out, a
time-out) is retried after a later round, a client that refuses is not asked again, a
lost confirmation is re-sent and never serves a request twice, and a request is served once
the fault is gone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.client_app import app as client_app
from faults.harness import (
    LocalGrid,
    config_of,
    file_scheduled,
    node_contexts,
    resumed,
    run_in_process,
    unlearning_events,
)
from fedunlearn import faults, protocol
from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionQueue, DeletionRequest
from simulations.judge import client_site

pytestmark = pytest.mark.faults

FORGETTING = 1  # the partition that files the request
BASE = {
    "data.dataset": "digits",
    "data.partition": "by_class",
    "train.model": "mlp",
    "data.num-clients": 3,
    "data.samples-per-client": 150,
    "data.test-samples": 200,
    "train.rounds": 1,
    "run.retries": 1,
    "train.batch-size": 32,
    "train.lr": 0.1,
    "train.threads": 1,
    "unlearn.method": "label_flip",
    "unlearn.label_flip.lr": 0.1,
    "unlearn.label_flip.outer-steps": 2,
    "unlearn.label_flip.remain-steps": 2,
    "unlearn.max-ta-drop": 0.25,  # forgetting a whole class costs test accuracy
}
Outcome = tuple[Path, dict[str, Any], LocalGrid, str]


def own_class(config: FederationConfig, partition: int) -> int:
    """The class ``partition`` holds most samples of (by_class: no other client holds it)."""
    labels = [client_site(config, p, Path(config.run.state_root)).dataset.labels.numpy() for p in range(3)]
    values, counts = np.unique(labels[partition], return_counts=True)
    label = int(values[np.argmax(counts)])
    assert all(label not in set(labels[p].tolist()) for p in range(3) if p != partition)
    return label


def run(
    tmp: Path, plans: dict[int, str], *, rounds: int = 3, **overrides: Any
) -> tuple[dict[str, Any], LocalGrid, str]:
    """Round 1, then the request filed on client 1, then the resumed run up to ``rounds``."""
    config = config_of({**BASE, "run.out-dir": str(tmp), "run.state-root": str(tmp / "state"), **overrides})
    grid = LocalGrid(client_app, node_contexts(3, plans=plans))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(faults.ENABLE_ENV, faults.ENABLE_TOKEN)
        run_in_process(config, grid)
        (request_id,) = file_scheduled(config, f"1:{FORGETTING}:class:{own_class(config, FORGETTING)}")
        results = run_in_process(resumed(config, rounds=rounds), grid)
    return results, grid, request_id


def request_on_client(tmp: Path, request_id: str) -> DeletionRequest:
    return DeletionQueue(tmp / "state" / f"client-{FORGETTING}").get(request_id)


def exchange_of(event: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The first exchange of a phase whose name starts with ``prefix`` ("fast 1", "slow 1", "commit")."""
    return next(x for x in event["stats"]["exchanges"] if x["name"].startswith(prefix))


def sent(grid: LocalGrid, message_type: str, node: int = 100 + FORGETTING) -> int:
    return sum(m.metadata.message_type == message_type and m.metadata.dst_node_id == node for m in grid.sent)


def assert_rolled_back(event: dict[str, Any]) -> None:
    assert event["status"] == "deferred" and event["reason"]
    assert event["model_before"] == event["model_after"]  # the global model was never touched
    assert event["receipt"] is None


def assert_no_receipt_anywhere(tmp: Path, request_id: str) -> None:
    assert not (tmp / "state" / f"client-{FORGETTING}" / "receipts" / f"{request_id}.json").exists()
    assert not (tmp / "receipts" / f"{request_id}.json").exists()


# ------------------------------------------------------------------ corrupted replies
@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("corrupted")
    plans = {
        1: "forget:nan:1,forget:inf:1:1,forget:shape:1:2,forget:extra-key:1:3,forget:missing-key:1:4",
        0: "remain:shape:1,remain:missing-key:1:1",
        2: "train:nan:1,evaluate:nan:1",
    }
    results, grid, request_id = run(tmp, plans)
    return tmp, results, grid, request_id


def test_nonfinite_or_misshapen_corrections_defer_the_phase_without_touching_the_model(
    corrupted: Outcome,
) -> None:
    _, results, _, _ = corrupted
    first, second, third = unlearning_events(results)
    assert_rolled_back(first)
    assert first["round"] == 1 and first["transient"]  # a bad reply is retried after a later round
    assert "NaN or Inf" in first["reason"]  # tries 1 and 2: NaN, then +Inf
    assert_rolled_back(second)
    assert "shape" in second["reason"] or "unexpected entries" in second["reason"]
    assert third["status"] == "served" and third["round"] == 3
    assert third["model_before"] != third["model_after"]


def test_invalid_remain_replies_are_left_out_of_the_slow_step(corrupted: Outcome) -> None:
    _, results, _, _ = corrupted
    served = unlearning_events(results)[-1]
    slow = exchange_of(served, "slow 1")
    assert (slow["nodes"], slow["replied"]) == (3, 2)  # client 0 sent a wrong shape, then a missing entry


def test_served_request_was_retried_without_troubling_its_owner(corrupted: Outcome) -> None:
    tmp, results, grid, request_id = corrupted
    request = request_on_client(tmp, request_id)
    assert request.status == "served" and request.attempts == 0 and request.last_error is None
    receipt = json.loads((tmp / "receipts" / f"{request_id}.json").read_text())
    assert receipt["model_digest_after"] == unlearning_events(results)[-1]["model_after"]
    steps = int(unlearning_events(results)[-1]["metrics"]["outer_steps"])
    # 2 tries in rounds 1 and 2; in round 3 a retry, then one judgement per outer step and the last one
    assert sent(grid, protocol.TRAIN_FORGET) == 2 + 2 + 1 + steps + 1


def test_invalid_train_and_evaluate_replies_are_left_out_and_get_weight_zero(
    corrupted: Outcome,
) -> None:
    tmp, results, _, _ = corrupted
    first_round = results["rounds"][0]
    assert first_round["failures"] == 1 and sorted(c["partition_id"] for c in first_round["clients"]) == [0, 1]
    manifest = json.loads(next((tmp / "state" / "client-2" / "history").glob("*/manifest.json")).read_text())
    weights = {row["round"]: row["weight"] for row in manifest["rounds"]}
    assert weights[1] == 0.0 and weights[2] > 0.0  # its NaN update of round 1 never reached the model


# ------------------------------------------------------------------ dropouts, timeouts, late acks
@pytest.fixture(scope="module")
def dropouts(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("dropouts")
    plans = {
        # 2 crashed fast steps; then a commit answered too late (the client committed after the
        # server stopped waiting) and a crashed re-send
        1: "forget:crash:2,commit:hang=6:1,commit:crash:1:1",
        2: "remain:crash:2",
    }
    results, grid, request_id = run(tmp, plans, **{"run.round-timeout": 5.0})
    return tmp, results, grid, request_id


def test_dropout_defers_and_the_request_is_served_later(dropouts: Outcome) -> None:
    _, results, _, _ = dropouts
    events = unlearning_events(results)
    assert [(e["round"], e["status"]) for e in events] == [(1, "deferred"), (2, "unconfirmed"), (3, "served")]
    assert_rolled_back(events[0])
    assert events[0]["transient"] and "crashed" in events[0]["reason"]  # the ClientApp raised (a dying client)
    assert exchange_of(events[1], "slow 1")["replied"] == 2  # client 2 crashed twice in the slow step


def test_late_commit_ack_is_confirmed_later_without_serving_twice(dropouts: Outcome) -> None:
    tmp, results, grid, request_id = dropouts
    unconfirmed, late = unlearning_events(results)[1:]
    assert unconfirmed["model_before"] != unconfirmed["model_after"]  # applied, awaiting the client's word
    assert late["reason"] == "confirmed late" and late["receipt"]["request_id"] == request_id
    assert late["receipt"]["model_digest_after"] == unconfirmed["model_after"]
    request = request_on_client(tmp, request_id)
    assert request.status == "served" and request.attempts == 0
    steps = int(unconfirmed["metrics"]["outer_steps"])
    assert sent(grid, protocol.TRAIN_FORGET) == 2 + steps + 1  # round 1: 2 crashed tries; round 2 only: never again
    assert sent(grid, protocol.QUERY_COMMIT) == 3  # late, crashed, and the re-send that confirmed it
    assert sorted(c["partition_id"] for c in results["rounds"][2]["clients"]) == [0, 2]  # held back until confirmed
    assert results["summary"]["unconfirmed_requests"] == [] and results["summary"]["pending_requests"] == {}


def test_a_lost_commit_reply_keeps_the_commit_for_re_sending(tmp_path: Path) -> None:
    # Prepare: the client commits, then its replies are lost on every try of the phase (fault hook
    # ``lost``, retries=1 so two tries: the work is done on the first)
    plans = {1: "commit:lost:2"}

    # Execute
    results, grid, request_id = run(tmp_path, plans, rounds=2)

    # Assert: the server keeps the weights applied and re-sends the commit; the request is served once
    events = unlearning_events(results)
    assert [(e["round"], e["status"]) for e in events] == [(1, "unconfirmed"), (2, "served")], [
        (e["round"], e["status"], e["reason"]) for e in events
    ]
    assert events[1]["reason"] == "confirmed late"
    request = request_on_client(tmp_path, request_id)
    assert request.status == "served" and request.attempts == 0
    receipt = json.loads((tmp_path / "receipts" / f"{request_id}.json").read_text())
    assert receipt["model_digest_after"] == events[0]["model_after"]


# ------------------------------------------------------------------ verification failure
def test_a_step_that_drops_test_accuracy_is_backed_off_and_the_unverified_request_stays_pending(
    tmp_path: Path,
) -> None:
    # Prepare: the forgetting client's corrections are finite but absurd, TA may fall by 5 points at most
    plans = {1: "forget:garbage:99"}

    # Execute
    results, grid, request_id = run(tmp_path, plans, rounds=2, **{"unlearn.max-ta-drop": 0.05})

    # Assert: no step was taken, the weights the client judged did not forget the class, nothing applied
    (event,) = unlearning_events(results)  # not retried unchanged in round 2 or after it
    assert event["round"] == 1 and event["status"] == "not_verified" and not event["transient"]
    assert event["model_before"] == event["model_after"] and event["receipt"] is None
    assert event["metrics"]["backoffs"] >= 1 and event["metrics"]["outer_steps"] == 0
    assert event["reason"].startswith("not verified")
    assert sent(grid, protocol.TRAIN_FORGET) == event["metrics"]["backoffs"]  # a fresh try each, until too weak
    request = request_on_client(tmp_path, request_id)
    assert request.status == "pending" and request.attempts == 1
    assert request.last_error is not None and "not verified" in request.last_error
    assert results["summary"]["pending_requests"] == {str(FORGETTING): [request_id]}
    assert_no_receipt_anywhere(tmp_path, request_id)


def test_a_forgetting_client_without_its_history_refuses_and_nothing_is_committed(tmp_path: Path) -> None:
    # Prepare: partial amnesiac reads the client's pruned history, which the node lost after round 1
    config = config_of(
        {
            **BASE,
            "unlearn.method": "partial_amnesiac",
            "run.out-dir": str(tmp_path),
            "run.state-root": str(tmp_path / "state"),
        }
    )
    grid = LocalGrid(client_app, node_contexts(3))
    run_in_process(config, grid)
    (request_id,) = file_scheduled(config, f"1:{FORGETTING}:class:{own_class(config, FORGETTING)}")
    shutil.rmtree(tmp_path / "state" / f"client-{FORGETTING}" / "history")

    # Execute
    results = run_in_process(resumed(config, rounds=2), grid)

    # Assert: refused with a reason naming no path, asked once, model unchanged, no receipt, still pending
    (event,) = unlearning_events(results)
    assert_rolled_back(event)
    assert not event["transient"] and "HistoryError" in event["reason"] and str(tmp_path) not in event["reason"]
    assert sent(grid, protocol.TRAIN_FORGET) == 1
    request = request_on_client(tmp_path, request_id)
    assert request.status == "pending" and request.attempts == 1 and "HistoryError" in (request.last_error or "")
    assert list((tmp_path / "state" / f"client-{FORGETTING}" / "receipts").glob("*.json")) == []
    assert_no_receipt_anywhere(tmp_path, request_id)
    assert results["summary"]["pending_requests"] == {str(FORGETTING): [request_id]}
