"""A real Flower simulation (Ray) with faults, whose every message is recorded.

Two runs of the project's ServerApp and ClientApp (3 clients, MNIST subsets split by class):
round 1, then the data officers of client 1 (20 samples) and client 2 (a class only it holds)
file deletion requests on their clients' disks, then the run resumes from its checkpoint up
to round 3. The test fault plan (environment variables, see ``fedunlearn.faults``) makes
client 1 crash on its first two ``train.forget`` and ``query.commit`` messages, and client 0
return NaN corrections twice. The server's Grid is wrapped so that every reply it receives
is kept, and the tests check them against the allow-list of the protocol: model-shaped
arrays, counts and metrics, request ids and receipts; never sample ids, history entries or
tracebacks. The sample criterion's margins are wide open (a sample request is served as soon
as it is judged), so only the class request needs the label-flip steps.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from faults.harness import config_of, file_scheduled, resumed, run_simulation_recorded, unlearning_events
from fedunlearn import faults, protocol
from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionQueue
from fedunlearn.models import build_model
from fedunlearn.receipts import RECEIPT_FIELDS, SERVER_HIDDEN_FIELDS
from simulations.judge import client_site

pytestmark = pytest.mark.faults

SAMPLE_REQUEST = "sched-r1-c1-sample-20p0"
PLAN = "1=forget:crash:2,commit:crash:2;0=remain:nan:2"
MAX_INT_LIST = 5  # no list of more integers than this may reach the server
CRITERION_FIGURES = {protocol.FA, protocol.MIA, "ASR", "holdout_accuracy"}
METRIC_KEYS = {
    protocol.NUM_EXAMPLES,
    protocol.TRAIN_LOSS,
    protocol.TRAIN_STEPS,
    protocol.PENDING_DELETIONS,
    protocol.HISTORY_BYTES,
    protocol.HISTORY_DENSE_BYTES,
    protocol.HISTORY_ROUND_BYTES,
    protocol.EVAL_LOSS,
    protocol.EVAL_ACCURACY,
    protocol.PASSED,
    protocol.NUM_RETAINED,
    protocol.CLASS_LEVEL,
    protocol.FORWARD_BACKWARD,
    protocol.EXAMPLES,
    protocol.HISTORY_STEPS,
    protocol.SECONDS,
    protocol.VERIFIED,
    protocol.PURGED_STEPS,
    protocol.RA,
    protocol.ATTEMPTS,
    *CRITERION_FIGURES,
    *{f"{protocol.CHECK_PREFIX}{k}" for k in CRITERION_FIGURES},
}
CONFIG_KEYS = {
    protocol.STATUS: {protocol.PARTITION_ID, protocol.NUM_PARTITIONS, protocol.REQUEST_IDS},
    protocol.RECEIPT: {protocol.RECEIPT_JSON},
}
SERVER_RECEIPT_FIELDS = RECEIPT_FIELDS - SERVER_HIDDEN_FIELDS


@dataclasses.dataclass
class Run:
    config: FederationConfig
    results: dict[str, Any]
    received: list[Message]
    sent: list[Message]
    class_request: str


def own_class(config: FederationConfig, partition: int) -> int:
    """The class ``partition`` holds most samples of (split by class: no other client holds it)."""
    labels = client_site(config, partition, Path(config.run.state_root)).dataset.labels.numpy()
    values, counts = np.unique(labels, return_counts=True)
    return int(values[np.argmax(counts)])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Run:
    tmp = tmp_path_factory.mktemp("simulation")
    config = config_of(
        {
            "data.dataset": "mnist",
            "data.root": str(data_root),
            "data.partition": "by_class",
            "train.model": "mlp",
            "data.num-clients": 3,
            "data.samples-per-client": 300,
            "data.test-samples": 500,
            "train.rounds": 1,
            "train.batch-size": 32,
            "train.lr": 0.1,
            "train.threads": 1,
            "run.retries": 1,
            "unlearn.method": "label_flip",
            "unlearn.label_flip.lr": 0.1,
            "unlearn.label_flip.outer-steps": 3,
            "unlearn.label_flip.remain-steps": 2,
            "unlearn.max-ta-drop": 0.25,
            "unlearn.sample-margin": 1.0,
            "unlearn.mia-margin": 0.5,
            "run.out-dir": str(tmp),
            "run.state-root": str(tmp / "state"),
        }
    )
    received: list[Message] = []
    sent: list[Message] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(faults.PLAN_ENV, PLAN)
        patch.setenv(faults.ENABLE_ENV, faults.ENABLE_TOKEN)
        run_simulation_recorded(config, received=received, sent=sent)
        label = own_class(config, 2)
        filed = file_scheduled(config, f"1:1:sample:20;1:2:class:{label}")
        results = run_simulation_recorded(resumed(config, rounds=3), received=received, sent=sent)
    assert filed == [SAMPLE_REQUEST, f"sched-r1-c2-class-{label}"]
    return Run(config, results, received, sent, filed[1])


def client_queue(run: Run, partition: int) -> DeletionQueue:
    return DeletionQueue(Path(run.config.run.state_root) / f"client-{partition}")


# ------------------------------------------------------------------------- faults
def test_faulty_phases_roll_back_and_every_request_is_served_later(run: Run) -> None:
    events = unlearning_events(run.results)
    assert [(e["round"], e["request_id"], e["status"]) for e in events] == [
        (1, SAMPLE_REQUEST, "deferred"),  # client 1 crashed twice in the fast step: the phase rolled back
        (1, run.class_request, "deferred"),  # served in the same phase, so deferred with it
        (2, SAMPLE_REQUEST, "unconfirmed"),  # applied, both commit messages crashed
        (2, run.class_request, "served"),
        (3, SAMPLE_REQUEST, "served"),  # the commit re-sent and confirmed: not served a second time
    ]
    deferred, _, unconfirmed, served_class, confirmed = events
    assert deferred["model_before"] == deferred["model_after"] and "ClientAppException" in deferred["reason"]
    assert deferred["transient"]
    assert unconfirmed["model_before"] != unconfirmed["model_after"]
    assert confirmed["reason"] == "confirmed late"
    slow = next(x for x in served_class["stats"]["exchanges"] if x["name"].startswith("slow 1"))
    assert (slow["nodes"], slow["replied"]) == (3, 2)  # client 0's NaN corrections left out twice
    assert run.results["summary"]["pending_requests"] == {} and run.results["summary"]["unconfirmed_requests"] == []


def test_receipts_match_on_client_and_server(run: Run) -> None:
    out = Path(run.config.run.out_dir or "")
    for partition, request_id in ((1, SAMPLE_REQUEST), (2, run.class_request)):
        queue = client_queue(run, partition)
        request = queue.get(request_id)
        assert request.status == "served"
        server_receipt = json.loads((out / "receipts" / f"{request_id}.json").read_text())
        assert server_receipt == queue.receipt(request_id).server_copy()
        assert set(server_receipt) == SERVER_RECEIPT_FIELDS and "num_samples" not in server_receipt
        ids = queue.committed_ids(request_id)
        assert ids is not None and queue.ids_match_receipt(request_id, ids)
    assert client_queue(run, 1).get(SAMPLE_REQUEST).attempts == 0  # drop-outs are retried, not reported


# ------------------------------------------------------------------------- security
def leaves(value: Any) -> Iterator[Any]:
    """Every value inside nested lists / dicts (JSON receipts are parsed)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, (list, tuple)):
        yield value
        for item in value:
            yield from leaves(item)
    else:
        yield value


def test_every_reply_holds_only_allow_listed_records_and_keys(run: Run) -> None:
    model = build_model(run.config.train.model, input_shape=(1, 28, 28), num_classes=10)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(run.received) > 30
    for reply in run.received:
        if reply.has_error():
            continue
        content = reply.content
        assert set(content.array_records) <= {protocol.ARRAYS}
        assert set(content.metric_records) <= {protocol.METRICS}
        assert set(content.config_records) <= set(CONFIG_KEYS)
        for record in content.array_records.values():  # model-shaped tensors, keyed by the model's names
            assert {k: tuple(v.shape) for k, v in record.items()}.items() <= shapes.items()
        for record in content.metric_records.values():
            assert set(record) <= METRIC_KEYS, set(record) - METRIC_KEYS
            assert all(isinstance(v, (int, float)) for v in record.values())
        for name, record in content.config_records.items():
            assert set(record) <= CONFIG_KEYS[name]
        status = content.config_records.get(protocol.STATUS)
        if status is not None:
            assert all(isinstance(r, str) for r in status.get(protocol.REQUEST_IDS, []))  # type: ignore[union-attr]


def test_no_sample_ids_history_entries_or_tracebacks_reach_the_server(run: Run) -> None:
    forgotten = {p: client_queue(run, p).forgotten_ids().tolist() for p in (1, 2)}
    assert len(forgotten[1]) == 20 and len(forgotten[2]) > MAX_INT_LIST
    id_lists = [str(ids) for ids in forgotten.values()] + [", ".join(map(str, ids[:3])) for ids in forgotten.values()]
    for reply in run.received:
        if reply.has_error():
            reason = reply.error.reason or ""
            assert "Traceback" not in reason and not re.search(r"\d+\s*,\s*\d+", reason), reason
            continue
        values: list[Any] = []
        for record in reply.content.config_records.values():
            values += [json.loads(v) if isinstance(v, str) and v.startswith("{") else v for v in record.values()]
        for leaf in leaves(values):
            if isinstance(leaf, (list, tuple)):
                assert sum(isinstance(v, int) and not isinstance(v, bool) for v in leaf) <= MAX_INT_LIST, leaf
        text = json.dumps([str(dict(r)) for r in reply.content.config_records.values()])
        assert not any(ids in text for ids in id_lists)


def test_receipts_carry_a_keyed_hash_of_the_ids_not_the_ids_nor_their_count(run: Run) -> None:
    receipts = [
        json.loads(str(r.content[protocol.RECEIPT][protocol.RECEIPT_JSON]))
        for r in run.received
        if not r.has_error() and protocol.RECEIPT in r.content.config_records
    ]
    assert {r["request_id"] for r in receipts} == {SAMPLE_REQUEST, run.class_request}
    for receipt in receipts:
        assert set(receipt) == SERVER_RECEIPT_FIELDS and "num_samples" not in receipt
        assert re.fullmatch(r"[0-9a-f]{64}", receipt["ids_hmac"])
        queue = client_queue(run, 1 if receipt["request_id"] == SAMPLE_REQUEST else 2)
        ids = queue.committed_ids(receipt["request_id"])
        assert ids is not None and receipt["ids_hmac"] == queue.receipt(receipt["request_id"]).ids_hmac
        assert receipt["ids_hmac"] not in (str(ids.tolist()), json.dumps(ids.tolist()))


def test_the_server_only_names_requests_its_clients_announced(run: Run) -> None:
    announced = {
        str(i)
        for r in run.received
        if not r.has_error() and protocol.STATUS in r.content.config_records
        for i in r.content[protocol.STATUS].get(protocol.REQUEST_IDS, [])
    }  # type: ignore[union-attr]
    named = {
        str(m.content[protocol.CONFIG][protocol.REQUEST_ID])
        for m in run.sent
        if protocol.REQUEST_ID in m.content.config_records.get(protocol.CONFIG, {})
    }
    assert named == announced == {SAMPLE_REQUEST, run.class_request}
    assert {m.metadata.message_type for m in run.sent} <= {
        protocol.QUERY_STATUS,
        protocol.TRAIN,
        protocol.EVALUATE,
        protocol.TRAIN_FORGET,
        protocol.TRAIN_REMAIN,
        protocol.EVALUATE_VERIFY,
        protocol.QUERY_COMMIT,
    }
