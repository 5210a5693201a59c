"""The node-side CLI: `fedunlearn forget` checks and queues requests, `fedunlearn receipts` lists them.

Every test works on a temporary state directory whose site files are written by the real
``ClientSite`` (a synthetic 12-sample dataset with labels 0, 1, 2), without Flower.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.receipts import sample_receipt

from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.deletion import DeletionQueue, DeletionRequest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.node_cli import forget, receipts
from fedunlearn.node_cli.checks import parse_id_lines
from fedunlearn.receipts import ids_hmac
from fedunlearn.site import ClientSite
from simulations.cli import main as cli_main

IDS = [100 + 7 * i for i in range(12)]  # 100, 107, ..., 177
LABELS = [0, 1, 2] * 4  # four samples per class; class 3 of 4 is held by nobody


def make_site(state_dir: Path, generator: torch.Generator) -> ClientSite:
    dataset = IndexedDataset(
        torch.rand(12, 1, 2, 2, generator=generator), torch.tensor(LABELS), torch.tensor(IDS), num_classes=4
    )
    return ClientSite(
        config=FederationConfig(),
        partition_id=1,
        state_dir=state_dir,
        lineage="test",
        dataset=dataset,
        test=dataset,
        input_shape=(1, 2, 2),
    )


@pytest.fixture
def state_dir(tmp_path: Path, generator: torch.Generator) -> Path:
    make_site(tmp_path / "state", generator)
    return tmp_path / "state"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | {
        str(p.relative_to(folder)) + "/": b"" for p in folder.rglob("*") if p.is_dir()
    }


def run_forget(capsys: pytest.CaptureFixture[str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    code = forget.main(list(args), stdin=io.StringIO(stdin))
    out, err = capsys.readouterr()
    return code, out, err


def write_ids(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ids.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def serve(state_dir: Path, request_id: str, ids: list[int]) -> None:
    """What the node does when the server commits a request (ids forgotten, receipt stored)."""
    queue = DeletionQueue(state_dir)
    receipt = sample_receipt(request_id, ids, server_round=2, metrics={"FA": 0.25, "TA": 0.9}, served_at=1000.0)
    queue.mark_served(request_id, resolved_ids=np.asarray(ids), receipt=receipt)


# ------------------------------------------------------------------------------ site files


def test_site_files_record_ids_labels_and_class_counts(state_dir: Path) -> None:
    # Execute
    info = json.loads((state_dir / "site.json").read_text())

    # Assert
    assert np.load(state_dir / "sample_ids.npy").tolist() == IDS
    assert np.load(state_dir / "sample_labels.npy").tolist() == LABELS
    assert info["class_counts"] == {"0": 4, "1": 4, "2": 4} and info["num_classes"] == 4


# ------------------------------------------------------------------------------ id files


def test_id_lines_allow_comments_blanks_and_trailing_comments() -> None:
    # Execute
    ids = parse_id_lines(["# patient 17\n", "\n", "107\n", "  114  # scan 2\n", "+121\n"], source="ids.txt")

    # Assert
    assert ids.ids == (107, 114, 121)
    assert ids.lines == (3, 4, 5)


def test_every_bad_line_is_named_with_its_number() -> None:
    # Execute
    with pytest.raises(DeletionRequestError) as err:
        parse_id_lines(["107\n", "abc\n", "-5\n", "1.5\n", "107\n", str(2**64) + "\n"], source="ids.txt")

    # Assert: all five problems, each with its line
    message = str(err.value)
    assert message.startswith("5 problems")
    for expected in (
        "line 2: 'abc' is not an integer",
        "line 3: '-5' is negative",
        "line 4: '1.5' is not an integer",
        "line 5: id 107 repeats line 1",
        "line 6:",
    ):
        assert expected in message


def test_an_id_file_without_ids_is_refused() -> None:
    with pytest.raises(DeletionRequestError, match="holds no sample ids"):
        parse_id_lines(["# nothing yet\n", "   \n"], source="ids.txt")


# ------------------------------------------------------------------------------ forget


def test_forget_samples_queues_a_durable_request_and_prints_its_id(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code, out, err = run_forget(capsys, "--state-dir", str(state_dir), "--samples", write_ids(tmp_path, "114\n100\n"))

    # Assert
    request_id = out.strip()
    stored = DeletionQueue(state_dir).get(request_id)
    assert code == 0 and "queued sample-level, 2 samples" in err
    assert stored.kind == "sample" and stored.sample_ids == (100, 114) and stored.status == "pending"


def test_forget_reads_ids_from_stdin_through_the_fedunlearn_command(
    state_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr("sys.stdin", io.StringIO("121\n128\n"))

    # Execute
    code = cli_main(["forget", "--state-dir", str(state_dir), "--samples", "-", "--request-id", "GDPR-2026-0042"])

    # Assert
    assert code == 0 and capsys.readouterr().out.strip() == "GDPR-2026-0042"
    assert DeletionQueue(state_dir).get("GDPR-2026-0042").sample_ids == (121, 128)


@pytest.mark.parametrize(
    ("ids_text", "expected"),
    [
        (
            "107\n999\n5\n",
            "2 id(s) are not held by this node (partition 1 of mnist, 12 samples): 999 (line 2), 5 (line 3)",
        ),
        ("107\nseven\n", "ids.txt line 2: 'seven' is not an integer sample id"),
        ("# only a comment\n", "ids.txt holds no sample ids"),
    ],
)
def test_bad_sample_requests_exit_2_and_write_nothing(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ids_text: str, expected: str
) -> None:
    # Prepare
    ids_file = write_ids(tmp_path, ids_text)
    before = snapshot(state_dir)

    # Execute
    code, out, err = run_forget(capsys, "--state-dir", str(state_dir), "--samples", ids_file)

    # Assert
    assert (code, out) == (2, "")
    assert "nothing was written" in err and expected in err
    assert snapshot(state_dir) == before


def test_ids_already_forgotten_or_pending_are_refused(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 100 and 107 were forgotten; 114 waits in a pending request
    queue = DeletionQueue(state_dir)
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=[100, 107], request_id="old"))
    serve(state_dir, "old", [100, 107])
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=[114], request_id="waiting"))
    before = snapshot(state_dir)

    # Execute
    code, _, err = run_forget(
        capsys, "--state-dir", str(state_dir), "--samples", write_ids(tmp_path, "121\n107\n114\n")
    )

    # Assert
    assert code == 2 and snapshot(state_dir) == before
    assert "1 id(s) were already forgotten (served requests): 107 (line 2)" in err
    assert "1 id(s) are already covered by pending request waiting: 114 (line 3)" in err


def test_samples_of_a_class_with_a_pending_class_request_are_refused(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: class 1 is 107, 128, 149, 170
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="class", label=1, request_id="class-1"))

    # Execute
    code, _, err = run_forget(capsys, "--state-dir", str(state_dir), "--samples", write_ids(tmp_path, "100\n128\n"))

    # Assert
    assert code == 2 and "covered by class 1, which pending request class-1 forgets: 128 (line 2)" in err


def test_forget_class_queues_a_class_request(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code, out, _ = run_forget(capsys, "--state-dir", str(state_dir), "--class", "2")

    # Assert
    stored = DeletionQueue(state_dir).get(out.strip())
    assert code == 0 and (stored.kind, stored.label, stored.sample_ids) == ("class", 2, ())


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("3", "this node holds no samples of class 3; classes held (count): 0 (4), 1 (4), 2 (4)"),
        ("4", "class 4 does not exist in mnist (labels 0..3)"),
        ("-1", "--class must be a label >= 0, got -1"),
    ],
)
def test_a_class_the_node_does_not_hold_is_refused(
    state_dir: Path, capsys: pytest.CaptureFixture[str], label: str, expected: str
) -> None:
    # Prepare
    before = snapshot(state_dir)

    # Execute
    code, _, err = run_forget(capsys, "--state-dir", str(state_dir), "--class", label)

    # Assert
    assert code == 2 and expected in err and snapshot(state_dir) == before


def test_a_class_whose_samples_were_all_forgotten_is_refused(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: every sample of class 0 was forgotten by sample-level requests
    DeletionQueue(state_dir).submit(
        DeletionRequest.new(kind="sample", sample_ids=[100, 121, 142, 163], request_id="r0")
    )
    serve(state_dir, "r0", [100, 121, 142, 163])

    # Execute
    code, _, err = run_forget(capsys, "--state-dir", str(state_dir), "--class", "0")

    # Assert
    assert code == 2 and "all 4 samples of class 0 on this node were already forgotten" in err


def test_forget_all_queues_once_and_then_blocks_every_further_request(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    first, out, _ = run_forget(capsys, "--state-dir", str(state_dir), "--all")
    second, _, err_all = run_forget(capsys, "--state-dir", str(state_dir), "--all")
    third, _, err_samples = run_forget(capsys, "--state-dir", str(state_dir), "--samples", write_ids(tmp_path, "100\n"))

    # Assert
    assert first == 0 and DeletionQueue(state_dir).get(out.strip()).kind == "client"
    assert (second, third) == (2, 2)
    assert f"client-level request {out.strip()} is already pending" in err_all and "already pending" in err_samples


def test_a_directory_without_site_files_needs_unchecked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a typo'd path must not silently collect requests no node will serve
    wrong = tmp_path / "stat"
    ids_file = write_ids(tmp_path, "5\n")

    # Execute
    refused, _, err = run_forget(capsys, "--state-dir", str(wrong), "--samples", ids_file)
    accepted, out, _ = run_forget(capsys, "--state-dir", str(wrong), "--samples", ids_file, "--unchecked")

    # Assert
    assert refused == 2 and "has no site.json" in err and "--unchecked" in err
    assert accepted == 0 and DeletionQueue(wrong).get(out.strip()).sample_ids == (5,)


def test_check_only_validates(state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    before = snapshot(state_dir)

    # Execute
    code, out, err = run_forget(
        capsys, "--state-dir", str(state_dir), "--samples", write_ids(tmp_path, "100\n"), "--check"
    )

    # Assert
    assert (code, out) == (0, "") and "is valid (not queued" in err and snapshot(state_dir) == before


def test_a_taken_or_malformed_request_id_is_refused(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="class", label=0, request_id="ticket-1"))

    # Execute
    taken, _, err_taken = run_forget(capsys, "--state-dir", str(state_dir), "--class", "1", "--request-id", "ticket-1")
    bad, _, err_bad = run_forget(capsys, "--state-dir", str(state_dir), "--class", "1", "--request-id", "../x")

    # Assert
    assert (taken, bad) == (2, 2)
    assert "'ticket-1' already exists" in err_taken and "--request-id must be letters" in err_bad


# ------------------------------------------------------------------------------ receipts


def test_receipts_lists_served_and_pending_requests(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    queue = DeletionQueue(state_dir)
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=[100, 107], request_id="done"))
    serve(state_dir, "done", [100, 107])
    queue.submit(DeletionRequest.new(kind="sample", sample_ids=[114], request_id="waiting"))
    queue.record_failure("waiting", "node 2 dropped out")

    # Execute
    code = receipts.main(["--state-dir", str(state_dir), "--json"])
    listing = json.loads(capsys.readouterr().out)
    text_code = receipts.main(["--state-dir", str(state_dir)])
    text = capsys.readouterr().out

    # Assert
    (served,) = listing["served"]
    (pending,) = listing["pending"]
    assert (code, text_code) == (0, 0)
    assert served["request_id"] == "done" and served["ids_hmac"] == ids_hmac(
        [107, 100], secret=queue.receipt_key("done")
    )
    assert served["ids_verified"] is True and served["metrics"]["FA"] == 0.25 and served["server_round"] == 2
    assert pending == pending | {
        "request_id": "waiting",
        "attempts": 1,
        "last_error": "node 2 dropped out",
        "num_samples": 1,
        "ids_hmac": queue.ids_hmac("waiting", [114]),  # what its receipt will carry
    }
    assert "served: 1" in text and "matches the forgotten ids" in text and "last error: node 2 dropped out" in text


def test_receipts_flags_a_hash_that_does_not_match_the_forgotten_ids(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the local record of forgotten ids no longer matches the receipt
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="sample", sample_ids=[100], request_id="r"))
    serve(state_dir, "r", [100])
    np.save(state_dir / "requests" / "r.forgotten.npy", np.array([107]))

    # Execute
    receipts.main(["--state-dir", str(state_dir), "--json"])

    # Assert
    assert json.loads(capsys.readouterr().out)["served"][0]["ids_verified"] is False


def test_receipts_on_a_wrong_directory_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = receipts.main(["--state-dir", str(tmp_path / "nowhere")])

    # Assert
    assert code == 2 and "holds no requests/ folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_show_key_prints_the_key_an_auditor_checks_the_servers_copy_with(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="sample", sample_ids=[100, 121], request_id="r"))
    serve(state_dir, "r", [100, 121])
    server_copy = DeletionQueue(state_dir).receipt("r").server_copy()

    # Execute
    code = receipts.main(["--state-dir", str(state_dir), "--show-key", "r"])
    out, err = capsys.readouterr()

    # Assert
    key = bytes.fromhex(out.strip())
    assert code == 0 and "auditor" in err
    assert ids_hmac([100, 121], secret=key) == server_copy["ids_hmac"]
    assert ids_hmac([100], secret=key) != server_copy["ids_hmac"]


def test_verify_reads_ids_from_stdin_and_refuses_unknown_requests_and_bad_usage(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    DeletionQueue(state_dir).submit(DeletionRequest.new(kind="sample", sample_ids=[114], request_id="r"))
    serve(state_dir, "r", [114])
    before = snapshot(state_dir)

    # Execute
    matched = receipts.main(
        ["--state-dir", str(state_dir), "--verify", "r", "--samples", "-"], stdin=io.StringIO("114\n")
    )
    unknown = receipts.main(
        ["--state-dir", str(state_dir), "--verify", "nope", "--samples", "-"], stdin=io.StringIO("1")
    )
    unknown_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        receipts.main(["--state-dir", str(state_dir), "--verify", "r"])

    # Assert
    assert (matched, unknown, usage.value.code) == (0, 2, 2)
    assert "'nope'" in unknown_err
    assert snapshot(state_dir) == before  # verifying writes nothing


def test_verify_and_show_key_on_a_wrong_directory_exit_2_and_create_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    verify = receipts.main(["--state-dir", str(tmp_path / "nowhere"), "--verify", "r", "--samples", "-"])
    show = receipts.main(["--state-dir", str(tmp_path / "nowhere"), "--show-key", "r"])

    # Assert
    assert (verify, show) == (2, 2) and "holds no requests/ folder" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
