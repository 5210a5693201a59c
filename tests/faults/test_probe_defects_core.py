"""Defects an outside probe found in the node's core (schedule, deletion queue, receipts, history).

Each test reproduces one finding and asserts the fixed behaviour:

1. an unlearning phase must be able to tell a missing or empty history from a fresh one;
2. non-finite numbers in a schedule entry or a receipt are refused;
3. a schedule that names the same deletion twice is refused when it is parsed;
4. whitespace around schedule fields is accepted, and every error names the entry and field;
5. a sample count larger than the client's data is refused, not clamped to "everything";
6. receipts carry a keyed hash (HMAC with a secret that never leaves the node), the
   server's copy carries no sample count, and the node can prove which ids a receipt covers;
7. a request file whose checksum field was removed is damaged, not trusted;
8. the docs name only messages the production ClientApp answers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.receipts import sample_receipt
from torch import nn

from fedunlearn import deletion
from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.deletion import DeletionQueue, DeletionRequest
from fedunlearn.errors import ConfigError, DeletionRequestError, HistoryError
from fedunlearn.history import HistoryStore
from fedunlearn.node_cli import receipts as receipts_cli
from fedunlearn.schedule import ScheduledDeletion, parse_schedule
from fedunlearn.training import train_local

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
CONFIG = HistoryConfig()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _served_queue(state_dir: Path, request_id: str, ids: list[int]) -> DeletionQueue:
    """A queue holding one served sample-level request for ``ids``."""
    queue = DeletionQueue(state_dir)
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=ids, request_id=request_id))
    queue.mark_served(request_id, resolved_ids=np.asarray(ids), receipt=sample_receipt(request_id, ids))
    return queue


# ============================================================ 1. a missing history is not an empty one


def test_open_existing_refuses_a_missing_history_directory_and_creates_nothing(tmp_path: Path) -> None:
    # Prepare
    missing = tmp_path / "history" / "run-7"

    # Execute
    with pytest.raises(HistoryError) as caught:
        HistoryStore.open_existing(missing, model=_model(), config=CONFIG)

    # Assert
    assert str(missing) in str(caught.value) and "does not exist" in str(caught.value)
    assert not missing.exists()


def test_open_existing_refuses_a_history_without_manifest_and_writes_none(tmp_path: Path) -> None:
    # Prepare: the directory survived but its manifest was deleted
    folder = tmp_path / "run-7"
    folder.mkdir()

    # Execute
    with pytest.raises(HistoryError) as caught:
        HistoryStore.open_existing(folder, model=_model(), config=CONFIG)

    # Assert
    assert "manifest.json" in str(caught.value) and str(folder) in str(caught.value)
    assert list(folder.iterdir()) == []


def test_open_existing_reads_a_recorded_history_and_is_empty_tells_whether_it_holds_rounds(tmp_path: Path) -> None:
    # Prepare: one recorded round
    model = _model()
    g = torch.Generator().manual_seed(0)
    data = IndexedDataset(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g), torch.arange(8), 3)
    recorder = HistoryStore.for_model(tmp_path / "run-1", model=model, config=CONFIG)
    fresh = HistoryStore.for_model(tmp_path / "run-2", model=model, config=CONFIG)
    with recorder.record_round(1) as rec:
        train_local(model, data, config=TrainConfig(batch_size=4, device="cpu"), seed=1, observer=rec)

    # Execute
    opened = HistoryStore.open_existing(tmp_path / "run-1", model=model, config=CONFIG)
    before = opened.is_empty
    opened.purge_all()

    # Assert
    assert opened.rounds() == [] and before is False
    assert opened.is_empty and fresh.is_empty


# ============================================================ 2-5. deletion schedules


@pytest.mark.parametrize("amount", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_a_non_finite_sample_amount_is_refused_naming_the_entry(amount: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        parse_schedule(f"1:1:sample:{amount}")

    # Assert
    message = str(caught.value)
    assert f"'1:1:sample:{amount}'" in message and "ARG" in message and "finite" in message


def test_a_scheduled_deletion_built_directly_with_nan_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        ScheduledDeletion(1, 0, "sample", amount=math.nan)
    assert "ARG" in str(caught.value) and "nan" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "repeated"),
    [
        ("1:0:sample:3;1:0:sample:3", "1:0:sample:3"),
        ("1:0:sample:3;2:1:client;1:0:sample:3.0", "1:0:sample:3.0"),
        ("1:0:sample;1:0:sample:0.1", "1:0:sample:0.1"),
        ("2:1:class:4; 2:1:class:4 ", "2:1:class:4"),
    ],
)
def test_a_schedule_naming_the_same_deletion_twice_is_refused(text: str, repeated: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        parse_schedule(text)

    # Assert
    message = str(caught.value)
    assert f"{repeated!r}" in message and "repeats" in message


def test_whitespace_around_schedule_fields_is_accepted() -> None:
    # Execute
    entries = parse_schedule(" 2 : 1 : client ; 3 :0: sample : 0.5 ;4: 2 :class: 7", num_clients=3)

    # Assert
    assert entries == (
        ScheduledDeletion(2, 1, "client"),
        ScheduledDeletion(3, 0, "sample", amount=0.5),
        ScheduledDeletion(4, 2, "class", label=7),
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("x:1:client", "ROUND must be an integer >= 1, got 'x'"),
        ("0:1:client", "ROUND must be an integer >= 1, got 0"),
        ("1:x:client", "CLIENT must be an integer >= 0, got 'x'"),
        ("1::client", "CLIENT must be an integer >= 0, got ''"),
        ("1:5:client", "CLIENT must be in [0, 4), got 5"),
        ("1:1:patient", "KIND must be one of sample, class, client, corrupted; got 'patient'"),
        ("1:1:class:x", "class ARG must be a label (an integer >= 0), got 'x'"),
        ("1:1:class:nan", "class ARG must be a label (an integer >= 0), got 'nan'"),
        ("1:1:class", "class needs ARG"),
        ("1:1:sample:abc", "sample ARG must be a number"),
        ("1:1:client:3", "client takes no ARG"),
        ("1:1", "has 2 fields"),
    ],
)
def test_every_schedule_error_names_the_entry_and_the_field(entry: str, problem: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        parse_schedule(f"1:0:client;{entry}", num_clients=4)

    # Assert
    message = str(caught.value)
    assert f"deletion-schedule entry {entry!r}: {problem}" in message, message
    assert "'1:0:client'" not in message  # the good entry is not blamed


def test_a_count_larger_than_the_clients_data_is_refused_not_clamped() -> None:
    # Prepare
    (entry,) = parse_schedule("1:1:sample:50")
    candidates, labels = np.arange(100, 120), np.zeros(20, dtype=np.int64)

    # Execute
    with pytest.raises(ConfigError) as caught:
        entry.select_ids(candidates, labels, seed=0)

    # Assert
    assert "50" in str(caught.value) and "20" in str(caught.value) and "client 1" in str(caught.value)


def test_a_whole_float_is_a_count_and_an_absurd_count_is_refused_at_parse_time() -> None:
    # Execute
    (count,) = parse_schedule("1:1:sample:1e1")
    chosen = count.select_ids(np.arange(30), np.zeros(30, dtype=np.int64), seed=0)
    with pytest.raises(ConfigError) as caught:
        parse_schedule("1:1:sample:1e9")

    # Assert
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert "'1:1:sample:1e9'" in str(caught.value) and "at most" in str(caught.value)


@pytest.mark.parametrize("amount", [2.5, 0.0, -3.0, math.inf])
def test_a_scheduled_deletion_with_a_bad_amount_is_refused_even_when_built_directly(amount: float) -> None:
    with pytest.raises(ConfigError) as caught:
        ScheduledDeletion(1, 0, "sample", amount=amount)
    assert "ARG" in str(caught.value)


# ============================================================ 6. receipts reveal nothing the server can test


def _unsalted_sha256(ids: list[int]) -> str:
    return hashlib.sha256(np.unique(np.asarray(ids, dtype=np.int64)).astype("<i8").tobytes()).hexdigest()


def test_a_receipt_hash_is_keyed_by_a_secret_the_node_keeps(tmp_path: Path) -> None:
    # Prepare: two nodes forget the same single id
    first = _served_queue(tmp_path / "a", "r1", [4711])
    second = _served_queue(tmp_path / "b", "r1", [4711])

    # Execute
    receipt = first.receipt("r1")
    stored = json.loads((first.receipts_dir / "r1.json").read_text())
    secret = tmp_path / "a" / deletion.NODE_SECRET_FILE
    brute_force = [i for i in range(10_000) if _unsalted_sha256([i]) == receipt.ids_hmac]

    # Assert
    assert "ids_sha256" not in stored and re.fullmatch(r"[0-9a-f]{64}", stored["ids_hmac"])
    assert brute_force == []  # the server's brute force over the id space finds nothing
    assert receipt.ids_hmac != second.receipt("r1").ids_hmac  # keyed per node
    assert len(secret.read_bytes()) == 32 and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert first.ids_match_receipt("r1", np.array([4711])) and not first.ids_match_receipt("r1", np.array([4712]))


def test_a_receipt_key_lets_an_auditor_check_one_receipt_without_the_node_secret(tmp_path: Path) -> None:
    # Prepare
    queue = _served_queue(tmp_path, "r1", [3, 9])
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=[5], request_id="r2"))
    queue.mark_served("r2", resolved_ids=np.array([5]), receipt=sample_receipt("r2", [5]))
    secret = (tmp_path / deletion.NODE_SECRET_FILE).read_bytes()

    # Execute: the node hands the auditor r1's key and its ids, nothing else
    key = queue.receipt_key("r1")
    server_copy = queue.receipt("r1").server_copy()

    # Assert
    assert deletion.ids_hmac([9, 3], secret=key) == server_copy["ids_hmac"]
    assert deletion.ids_hmac([5], secret=key) != queue.receipt("r2").ids_hmac  # r1's key opens r1 only
    assert key != secret and secret.hex() not in key.hex()


def test_the_server_copy_of_a_receipt_carries_no_sample_count_or_label(tmp_path: Path) -> None:
    # Prepare
    queue = _served_queue(tmp_path, "r1", [11, 12, 13])

    # Execute
    full = queue.receipt("r1")
    copy = full.server_copy()

    # Assert
    assert full.num_samples == 3
    assert "num_samples" not in copy and "label" not in copy
    assert copy == {k: v for k, v in full.to_json().items() if k != "num_samples"}
    assert json.loads(json.dumps(copy))["ids_hmac"] == full.ids_hmac


@pytest.mark.parametrize("damage", ["changed", "deleted", "truncated"])
def test_a_damaged_node_secret_stops_the_node_naming_the_secret_file(tmp_path: Path, damage: str) -> None:
    # Prepare
    queue = _served_queue(tmp_path, "r1", [1, 2])
    secret = tmp_path / deletion.NODE_SECRET_FILE
    if damage == "changed":
        secret.write_bytes(bytes(32))
    elif damage == "deleted":
        secret.unlink()
    else:
        secret.write_bytes(secret.read_bytes()[:5])

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        queue.forgotten_ids()

    # Assert
    assert deletion.NODE_SECRET_FILE in str(caught.value) and "backup" in str(caught.value)
    assert secret.exists() == (damage != "deleted")  # nothing re-created behind the operator's back


def test_the_receipts_command_verifies_ids_supplied_by_the_data_officer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    _served_queue(tmp_path, "r1", [3, 9])
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("9\n3  # scan 2\n")
    bad.write_text("3\n")

    # Execute
    matched = receipts_cli.main(["--state-dir", str(tmp_path), "--verify", "r1", "--samples", str(good)])
    matched_out = capsys.readouterr().out
    refused = receipts_cli.main(["--state-dir", str(tmp_path), "--verify", "r1", "--samples", str(bad)])
    refused_out = capsys.readouterr().out

    # Assert
    assert (matched, refused) == (0, 1)
    assert "r1" in matched_out and "match" in matched_out and "DO NOT match" in refused_out


def test_receipts_command_keeps_listing_with_the_new_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    _served_queue(tmp_path, "r1", [3, 9])

    # Execute
    code = receipts_cli.main(["--state-dir", str(tmp_path), "--json"])
    listing = json.loads(capsys.readouterr().out)

    # Assert
    (served,) = listing["served"]
    assert code == 0 and served["ids_verified"] is True and served["ids_hmac"]
    assert "ids_sha256" not in served


@pytest.mark.parametrize(
    ("field", "value"), [("served_at", math.nan), ("seconds", math.inf), ("num_samples", math.nan)]
)
def test_a_receipt_with_a_non_finite_number_is_refused_naming_the_field(
    tmp_path: Path, field: str, value: float
) -> None:
    # Prepare: a receipt file with a NaN/Inf (json writes them as bare NaN / Infinity)
    queue = _served_queue(tmp_path, "r1", [1])
    path = queue.receipts_dir / "r1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        queue.receipt("r1")

    # Assert
    assert field in str(caught.value) and str(path) in str(caught.value)


def test_a_receipt_with_a_non_finite_metric_is_refused() -> None:
    payload = {**sample_receipt("r1", [1]).to_json(), "metrics": {"FA": math.nan, "RA": 0.9}}
    with pytest.raises(DeletionRequestError) as caught:
        deletion.DeletionReceipt.from_json(payload)
    assert "FA" in str(caught.value) and "finite" in str(caught.value)


# ============================================================ 7. a request file without its checksum


def test_a_request_file_whose_checksum_was_removed_is_refused(tmp_path: Path) -> None:
    # Prepare: someone edits the ids and removes the checksum field
    queue = DeletionQueue(tmp_path)
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=[1, 2], request_id="r1"))
    path = queue.dir / "r1.json"
    payload = json.loads(path.read_text())
    del payload["sha256"]
    path.write_text(json.dumps({**payload, "sample_ids": [1, 2, 3, 4]}))

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        queue.get("r1")

    # Assert
    message = str(caught.value)
    assert str(path) in message and "checksum" in message and "restore" in message and "re-file" in message


# ============================================================ 8. docs and the production ClientApp


@pytest.fixture(scope="module")
def production_messages() -> set[str]:
    """The message types the production ClientApp answers (importing Flower once per module)."""
    from clients.client_app import app

    return set(app._registered_funcs)  # noqa: SLF001


@pytest.mark.parametrize("doc", ["docs/THREAT_MODEL.md", "docs/DEPLOYMENT.md"])
def test_docs_name_only_messages_the_production_client_answers(doc: str, production_messages: set[str]) -> None:
    # Prepare
    text = (REPO / doc).read_text(encoding="utf-8")

    # Execute
    named = set(re.findall(r"`((?:query|train|evaluate)\.[a-z-]+)`", text))

    # Assert
    unanswered = named - production_messages
    assert not unanswered, f"{doc} names messages the production ClientApp does not answer: {unanswered}"
    assert not re.search(r"answers? `?query\.(restore|snapshot)", text)
