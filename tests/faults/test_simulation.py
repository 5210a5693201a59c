"""A real Flower simulation (Ray) with faults, whose every message is recorded.

One run (3 clients, MNIST subsets, 3 rounds) serves a sample-level deletion of client 1
and a class-level deletion of client 2, while the test fault plan (environment variables,
see ``fedunlearn.faults``) makes client 1 fail its first two ``train.forget`` replies and
lose the replies of its first real commit, and client 0 return NaN corrections twice.
The server's Grid is wrapped so that every reply it receives is kept, and the tests check
them against the allow-list of the protocol: model-shaped arrays, counts and metrics,
request ids and receipts; never sample ids, history entries or tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from faults.harness import run_simulation_recorded, unlearning_events
from fedunlearn import faults, protocol
from fedunlearn.config import FederationConfig
from fedunlearn.deletion import DeletionQueue, DeletionReceipt, ids_digest
from fedunlearn.models import build_model

pytestmark = pytest.mark.faults

SAMPLE_REQUEST, CLASS_REQUEST = "sched-r1-c1-sample-20p0", "sched-r2-c2-class-3"
PLAN = "1=forget:error:2,commit:lost:2:1;0=remain:nan:2"
MAX_INT_LIST = 5  # no list of more integers than this may reach the server
METRIC_KEYS = {
    protocol.NUM_EXAMPLES,
    protocol.TRAIN_LOSS,
    protocol.PENDING_DELETIONS,
    protocol.HISTORY_BYTES,
    protocol.HISTORY_DENSE_BYTES,
    protocol.HISTORY_ROUND_BYTES,
    protocol.EVAL_LOSS,
    protocol.EVAL_ACCURACY,
    protocol.NUM_RETAINED,
    protocol.FA_BEFORE,
    protocol.FORWARD_BACKWARD,
    protocol.HISTORY_STEPS,
    protocol.SECONDS,
    protocol.PURGED_STEPS,
    protocol.FA,
    protocol.RA,
    protocol.MIA,
    protocol.ATTEMPTS,
}
CONFIG_KEYS = {
    protocol.STATUS: {protocol.PARTITION_ID, protocol.REQUEST_IDS},
    protocol.RECEIPT: {protocol.RECEIPT_JSON},
}
RECEIPT_FIELDS = {f.name for f in dataclasses.fields(DeletionReceipt)}


@dataclasses.dataclass
class Run:
    config: FederationConfig
    results: dict[str, Any]
    received: list[Message]
    sent: list[Message]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Run:
    tmp = tmp_path_factory.mktemp("simulation")
    config = FederationConfig.from_run_config(
        {
            "dataset": "mnist",
            "data-root": str(data_root),
            "model": "mlp",
            "num-clients": 3,
            "samples-per-client": 300,
            "test-samples": 500,
            "num-server-rounds": 3,
            "batch-size": 32,
            "lr": 0.1,
            "client-threads": 1,
            "deletion-schedule": "1:1:sample:20;2:2:class:3",
            "phase-retries": 1,
            "unlearn-outer-steps": 2,
            "unlearn-remain-steps": 2,
            "out-dir": str(tmp),
            "state-root": str(tmp / "state"),
        }
    )
    received: list[Message] = []
    sent: list[Message] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(faults.PLAN_ENV, PLAN)
        patch.setenv(faults.ENABLE_ENV, faults.ENABLE_TOKEN)
        results = run_simulation_recorded(config, received=received, sent=sent)
    return Run(config, results, received, sent)


def client_queue(run: Run, partition: int) -> DeletionQueue:
    return DeletionQueue(Path(run.config.state_root) / f"client-{partition}")


# ------------------------------------------------------------------------- faults
def test_faulty_phases_roll_back_and_every_request_is_served_later(run: Run) -> None:
    events = unlearning_events(run.results)
    assert [(e["round"], e["request_id"], e["status"]) for e in events] == [
        (1, SAMPLE_REQUEST, "deferred"),  # client 1's corrections failed twice: phase rolled back
        (2, SAMPLE_REQUEST, "unconfirmed"),  # applied after verification, both commit replies lost
        (2, CLASS_REQUEST, "served"),
        (3, SAMPLE_REQUEST, "served"),  # the commit re-sent and confirmed: not served a second time
    ]
    deferred, unconfirmed, served_class, confirmed = events
    assert deferred["model_before"] == deferred["model_after"] and "FaultInjected" in deferred["reason"]
    assert unconfirmed["model_before"] != unconfirmed["model_after"]
    assert confirmed["reason"] == "confirmed late"
    slow = {x["name"]: x["replied"] for x in unconfirmed["stats"]["exchanges"]}
    assert slow["slow 1/2"] == 1 and slow["slow 2/2"] == 2  # client 0's NaN corrections left out twice
    assert run.results["summary"]["pending_requests"] == {} and run.results["summary"]["unconfirmed_requests"] == []


def test_receipts_match_on_client_and_server(run: Run) -> None:
    for partition, request_id in ((1, SAMPLE_REQUEST), (2, CLASS_REQUEST)):
        queue = client_queue(run, partition)
        request = queue.get(request_id)
        assert request.status == "served"
        client_receipt = queue.receipt(request_id).to_json()
        server_receipt = json.loads((Path(run.config.out_dir or "") / "receipts" / f"{request_id}.json").read_text())
        assert client_receipt == server_receipt
        ids = queue.committed_ids(request_id)
        assert ids is not None and server_receipt["ids_sha256"] == ids_digest(ids)
    assert client_queue(run, 1).get(SAMPLE_REQUEST).attempts == 1  # the server told it why round 1 failed


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
            assert set(record) <= METRIC_KEYS
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


def test_receipts_carry_a_hash_of_the_ids_not_the_ids(run: Run) -> None:
    receipts = [
        json.loads(str(r.content[protocol.RECEIPT][protocol.RECEIPT_JSON]))
        for r in run.received
        if not r.has_error() and protocol.RECEIPT in r.content.config_records
    ]
    assert {r["request_id"] for r in receipts} == {SAMPLE_REQUEST, CLASS_REQUEST}
    for receipt in receipts:
        assert set(receipt) == RECEIPT_FIELDS
        assert re.fullmatch(r"[0-9a-f]{64}", receipt["ids_sha256"])
        ids = client_queue(run, 1 if receipt["request_id"] == SAMPLE_REQUEST else 2).forgotten_ids()
        assert receipt["ids_sha256"] == ids_digest(ids) and receipt["num_samples"] == len(ids)
        assert receipt["ids_sha256"] not in (str(ids.tolist()), json.dumps(ids.tolist()))


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
    assert named == announced == {SAMPLE_REQUEST, CLASS_REQUEST}
    assert {m.metadata.message_type for m in run.sent} <= {
        protocol.QUERY_STATUS,
        protocol.TRAIN,
        protocol.EVALUATE,
        protocol.TRAIN_FORGET,
        protocol.TRAIN_REMAIN,
        protocol.EVALUATE_VERIFY,
        protocol.QUERY_COMMIT,
    }
