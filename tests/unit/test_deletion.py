"""Deletion requests, their durable queue, receipts, and the atomic writes underneath."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers.receipts import sample_receipt

from fedunlearn.atomic import save_npy_atomic, write_bytes_atomic, write_json_atomic
from fedunlearn.deletion import DeletionQueue, DeletionRequest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.receipts import NODE_SECRET_FILE, ids_hmac
from fedunlearn.results import ClientRoundRecord, RoundRecord, RunResults

DISTINCT_IDS = [987654321, 123456789, 555000111]  # easy to spot in any file


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------- requests


def test_new_sample_request_sorts_and_deduplicates_ids() -> None:
    # Execute
    request = DeletionRequest.new(kind="sample", sample_ids=[5, np.int64(3), 5, 0])

    # Assert
    assert request.sample_ids == (0, 3, 5)
    assert all(type(v) is int for v in request.sample_ids)
    assert request.status == "pending" and request.attempts == 0 and request.created_at > 0
    assert len(request.request_id) == 16 and request.request_id.isalnum()


def test_new_requests_of_each_kind_are_valid() -> None:
    # Execute
    by_class = DeletionRequest.new(kind="class", label=4)
    by_client = DeletionRequest.new(kind="client")

    # Assert
    assert by_class.label == 4 and by_class.sample_ids == ()
    assert by_client.label is None and by_client.sample_ids == ()
    assert by_class.request_id != by_client.request_id


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"kind": "sample"}, "at least one sample id"),
        ({"kind": "sample", "sample_ids": []}, "at least one sample id"),
        ({"kind": "class", "label": 1, "sample_ids": [3]}, "takes no sample ids"),
        ({"kind": "client", "sample_ids": [3]}, "takes no sample ids"),
        ({"kind": "sample", "sample_ids": [4, -2]}, ">= 0, got [-2]"),
        ({"kind": "sample", "sample_ids": [1, "7"]}, "must be integers, got ['7']"),
        ({"kind": "sample", "sample_ids": [1.5]}, "must be integers"),
        ({"kind": "sample", "sample_ids": [True, 2]}, "must be integers, got [True]"),
        ({"kind": "class"}, "needs a label >= 0, got None"),
        ({"kind": "class", "label": -1}, "needs a label >= 0, got -1"),
        ({"kind": "class", "label": True}, "needs a label >= 0, got True"),
        ({"kind": "class", "label": "3"}, "needs a label >= 0, got '3'"),
        ({"kind": "sample", "sample_ids": [1], "label": 2}, "takes no label"),
        ({"kind": "client", "label": 2}, "takes no label"),
        ({"kind": "patient"}, "kind must be one of sample, class, client; got 'patient'"),
    ],
)
def test_malformed_new_request_raises_with_reason(kwargs: dict[str, object], text: str) -> None:
    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        DeletionRequest.new(**kwargs)  # type: ignore[arg-type]

    # Assert
    assert text in str(caught.value)


@pytest.mark.parametrize(
    ("sample_ids", "text"),
    [((-1, 2), ">= 0"), ((1, "x"), "integers"), ((True,), "integers")],
    ids=["neg", "str", "bool"],
)
def test_direct_construction_validates_ids_too(sample_ids: tuple[object, ...], text: str) -> None:
    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        DeletionRequest("r1", "sample", sample_ids)  # type: ignore[arg-type]

    # Assert
    assert text in str(caught.value)


def test_request_json_round_trip() -> None:
    # Prepare
    request = DeletionRequest.new(kind="sample", sample_ids=[9, 1])

    # Execute
    payload = json.loads(json.dumps(request.to_json()))
    restored = DeletionRequest.from_json(payload)

    # Assert
    assert restored == request
    assert payload["sample_ids"] == [1, 9]


# --------------------------------------------------------------------------------- digest


def test_ids_hmac_ignores_order_and_duplicates_and_depends_on_the_key() -> None:
    # Prepare
    key, other_key = bytes(range(32)), bytes(range(1, 33))

    # Execute
    digest = ids_hmac(DISTINCT_IDS, secret=key)
    shuffled = ids_hmac(np.array(DISTINCT_IDS[::-1] + DISTINCT_IDS[:1]), secret=key)
    fewer = ids_hmac(DISTINCT_IDS[:2], secret=key)
    rekeyed = ids_hmac(DISTINCT_IDS, secret=other_key)

    # Assert
    assert digest == shuffled
    assert len({digest, fewer, rekeyed}) == 3
    assert len(digest) == 64 and all(str(i) not in digest for i in DISTINCT_IDS)


@pytest.mark.parametrize("secret", [b"", b"short", "a" * 32], ids=["empty", "short", "str"])
def test_ids_hmac_refuses_a_weak_or_missing_key(secret: object) -> None:
    with pytest.raises(DeletionRequestError) as caught:
        ids_hmac([1], secret=secret)  # type: ignore[arg-type]
    assert "at least 16 bytes" in str(caught.value)


def test_the_node_secret_is_created_once_and_read_back(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)

    # Execute
    with pytest.raises(DeletionRequestError) as missing:
        queue.node_secret()  # reading never creates it
    created = queue.node_secret(create=True)
    again = DeletionQueue(tmp_path).node_secret(create=True)

    # Assert
    assert NODE_SECRET_FILE in str(missing.value)
    assert created == again == (tmp_path / NODE_SECRET_FILE).read_bytes() and len(created) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == [NODE_SECRET_FILE, "receipts", "requests"]


# ---------------------------------------------------------------------------------- queue


def test_submit_then_get_returns_the_same_request(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    request = DeletionRequest.new(kind="sample", sample_ids=[1, 2])

    # Execute
    queue.submit(request)
    loaded = DeletionQueue(tmp_path).get(request.request_id)  # a restarted client reads it back

    # Assert
    assert loaded == request
    assert (tmp_path / "requests" / f"{request.request_id}.json").exists()


def test_submit_twice_raises(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    request = queue.submit(DeletionRequest.new(kind="client"))

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        queue.submit(request)

    # Assert
    assert "already exists" in str(caught.value) and request.request_id in str(caught.value)


def test_get_unknown_or_unsafe_request_id_raises(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)

    # Execute
    with pytest.raises(DeletionRequestError) as unknown:
        queue.get("nothere")
    with pytest.raises(DeletionRequestError) as unsafe:
        queue.get("../../etc/passwd")

    # Assert
    assert "nothere" in str(unknown.value) and str(queue.dir) in str(unknown.value)
    assert "alphanumeric" in str(unsafe.value)


def test_pending_lists_requests_oldest_first_until_served(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    late = DeletionRequest("late", "client", created_at=20.0)
    early = DeletionRequest("early", "sample", (4, 5), created_at=10.0)
    queue.submit(late)
    queue.submit(early)

    # Execute
    before = [r.request_id for r in queue.pending()]
    queue.mark_served("early", resolved_ids=np.array([4, 5]), receipt=sample_receipt("early", [4, 5]))
    after = [r.request_id for r in queue.pending()]

    # Assert
    assert before == ["early", "late"]
    assert after == ["late"]
    assert [r.request_id for r in queue.all()] == ["early", "late"]


def test_record_failure_keeps_request_pending_and_counts_attempts(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    request = queue.submit(DeletionRequest.new(kind="class", label=2))

    # Execute
    queue.record_failure(request.request_id, "client dropped out")
    updated = queue.record_failure(request.request_id, "verification failed")

    # Assert
    stored = queue.get(request.request_id)
    assert stored == updated
    assert stored.status == "pending" and stored.attempts == 2 and stored.last_error == "verification failed"
    assert [r.request_id for r in queue.pending()] == [request.request_id]


def test_mark_served_stores_forgotten_ids_and_receipt_without_ids(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    first = queue.submit(DeletionRequest.new(kind="sample", sample_ids=DISTINCT_IDS[:2]))
    second = queue.submit(DeletionRequest.new(kind="sample", sample_ids=DISTINCT_IDS[1:]))
    queue.record_failure(first.request_id, "transient")

    # Execute
    served = queue.mark_served(
        first.request_id,
        resolved_ids=np.array(DISTINCT_IDS[:2]),
        receipt=sample_receipt(first.request_id, DISTINCT_IDS[:2], served_at=50.0),
    )
    queue.mark_served(
        second.request_id,
        resolved_ids=np.array(DISTINCT_IDS[1:]),
        receipt=sample_receipt(second.request_id, DISTINCT_IDS[1:], served_at=40.0),
    )

    # Assert
    assert served.status == "served" and served.served_at == 50.0 and served.last_error is None
    assert queue.get(first.request_id) == served and queue.pending() == []
    assert queue.forgotten_ids().tolist() == sorted(DISTINCT_IDS)
    assert queue.forgotten_ids().dtype == np.int64
    receipts = queue.receipts()
    assert [r["request_id"] for r in receipts] == [second.request_id, first.request_id]  # oldest first
    assert receipts[1]["ids_hmac"] == ids_hmac(DISTINCT_IDS[:2], secret=queue.receipt_key(first.request_id))
    assert queue.ids_match_receipt(first.request_id, DISTINCT_IDS[:2])
    receipt_text = "".join(p.read_text() for p in queue.receipts_dir.glob("*.json"))
    assert all(str(i) not in receipt_text for i in DISTINCT_IDS)


def test_empty_queue_has_no_forgotten_ids_or_receipts(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)

    # Execute
    forgotten, receipts, pending = queue.forgotten_ids(), queue.receipts(), queue.pending()

    # Assert
    assert forgotten.dtype == np.int64 and len(forgotten) == 0
    assert receipts == [] and pending == []


@pytest.mark.parametrize(
    "content",
    [
        b'{"request_id": "bad1", "kind": "sample", "sample_ids": [1, 2',  # torn write
        b"\xff\xfe\x00garbage",  # not text
        b'["not", "an", "object"]',  # valid JSON, wrong shape
        b'{"request_id": "bad1", "kind": "sample", "sample_ids": [1], "colour": "red"}',  # unknown field
        b'{"request_id": "bad1", "kind": "sample", "sample_ids": [-5]}',  # invalid content
        b'{"request_id": "bad1", "kind": "sample", "sample_ids": [1], "status": "lost"}',  # unknown status
    ],
    ids=["truncated", "binary", "list", "unknown-field", "negative-id", "bad-status"],
)
def test_corrupted_request_file_raises_naming_the_path(tmp_path: Path, content: bytes) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    path = queue.dir / "bad1.json"
    path.write_bytes(content)

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        queue.get("bad1")

    # Assert
    assert str(path) in str(caught.value)


def test_queue_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    # Prepare
    queue = DeletionQueue(tmp_path)
    request = queue.submit(DeletionRequest.new(kind="sample", sample_ids=[3]))

    # Execute
    queue.record_failure(request.request_id, "x")
    queue.mark_served(request.request_id, resolved_ids=np.array([3]), receipt=sample_receipt(request.request_id, [3]))

    # Assert
    rid = request.request_id
    assert _all_files(tmp_path) == [
        NODE_SECRET_FILE,
        f"receipts/{rid}.json",
        f"requests/{rid}.forgotten.npy",
        f"requests/{rid}.json",
    ]


# --------------------------------------------------------------------------- atomic files


def test_atomic_writers_replace_content_and_leave_no_temp_files(tmp_path: Path) -> None:
    # Prepare
    target = tmp_path / "sub" / "data.bin"

    # Execute
    write_bytes_atomic(target, b"old")
    write_bytes_atomic(target, b"new")
    write_json_atomic(tmp_path / "x.json", {"path": Path("/a"), "array": np.arange(3)})
    save_npy_atomic(tmp_path / "x.npy", np.array([7, 8], dtype=np.int64))

    # Assert
    assert target.read_bytes() == b"new"
    assert json.loads((tmp_path / "x.json").read_text()) == {"path": "/a", "array": [0, 1, 2]}
    assert np.load(tmp_path / "x.npy").tolist() == [7, 8]
    assert _all_files(tmp_path) == ["sub/data.bin", "x.json", "x.npy"]


def test_failed_atomic_write_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    target = tmp_path / "state.json"
    write_json_atomic(target, {"v": 1})

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)

    # Execute
    with pytest.raises(OSError):
        write_json_atomic(target, {"v": 2})

    # Assert
    assert json.loads(target.read_text()) == {"v": 1}
    assert _all_files(tmp_path) == ["state.json"]


def test_json_writer_rejects_unserializable_values_without_leaving_files(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(TypeError) as caught:
        write_json_atomic(tmp_path / "x.json", {"bad": object()})

    # Assert
    assert "object" in str(caught.value)
    assert _all_files(tmp_path) == []


# ------------------------------------------------------------------------------- results


def test_run_results_written_as_json_round_trip(tmp_path: Path) -> None:
    # Prepare
    results = RunResults(config={"train.rounds": 1})
    results.rounds.append(RoundRecord(1, 0.5, 0.8, 0.9, 0.3, 1.2, [ClientRoundRecord(0, 10, 1.0, 0.5)]))
    results.events.append({"kind": "deletion", "receipt": sample_receipt("r1", [1]).to_json()})

    # Execute
    path = results.write(tmp_path / "out" / "results.json")

    # Assert
    loaded = json.loads(path.read_text())
    assert loaded == results.to_dict()
    assert loaded["rounds"][0]["clients"][0]["weight"] == 1.0
    assert loaded["events"][0]["receipt"]["request_id"] == "r1"
    assert _all_files(tmp_path) == ["out/results.json"]
