"""End to end: a method forgets where doing nothing does not, in a real Flower simulation.

One comparison on a small real-MNIST federation (the engine `fedunlearn simulate` runs):
client 1 holds records poisoned with a trigger relabelled 0, and deletes exactly those after
the last round. Doing nothing (`none`) keeps the backdoor, RT never learnt it; the test
checks that the cell discriminates, that partial amnesiac unlearning takes the attack
success rate to RT's level, and that the same forgetting check fails for `none`, so the
test could not pass with a method that does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import unflatten_dict

from fedunlearn.run_config import config_from_sections
from simulations.comparison import CONTROLS, Comparison
from simulations.simulate import run_comparison

pytestmark = pytest.mark.e2e

CELL = {
    "data.dataset": "mnist",
    "train.model": "mlp",
    "data.num-clients": 4,
    "data.samples-per-client": 500,
    "data.test-samples": 1000,
    "train.rounds": 5,
    "train.local-epochs": 3,
    "train.batch-size": 32,
    "train.lr": 0.1,
    "train.threads": 1,
    "experiment.corrupt-client": 1,
    "experiment.corrupt-kind": "trigger",
    "experiment.corrupt-fraction": 0.1,
    "experiment.deletion-schedule": "5:1:corrupted",
    "unlearn.method": "partial_amnesiac",
    "unlearn.asr-target": 0.02,
}


def forgets(row: dict[str, Any], none: dict[str, Any]) -> bool:
    """The forgetting claim: the forget metric within 5 points of RT, and at least half of the
    way from where doing nothing leaves it."""
    return row["forget_gap_rt"] <= 5.0 and row["forget_gain_vs_none"] >= 0.5 * none["forget_gap_rt"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("forgetting")
    flat = {**CELL, "data.root": str(data_root), "run.out-dir": str(out), "run.state-root": str(out / "state")}
    config = config_from_sections(unflatten_dict(flat))
    return run_comparison(Comparison(config, ("partial_amnesiac", *CONTROLS), out), cpus=2)


def test_the_cell_discriminates_doing_nothing_keeps_the_backdoor(report: dict[str, Any]) -> None:
    rows = report["rows"]
    assert report["forget_metric"] == "ASR"
    assert report["discriminating"]
    assert rows["none"]["ASR"] > rows["RT"]["ASR"] + 0.15  # the poisoned records taught the trigger


def test_partial_amnesiac_forgets_and_none_would_not_pass_the_same_check(report: dict[str, Any]) -> None:
    rows = report["rows"]
    assert forgets(rows["partial_amnesiac"], rows["none"])
    assert not forgets(rows["none"], rows["none"])  # replacing the method by `none` fails this test
    assert rows["partial_amnesiac"]["TA"] >= rows["RT"]["TA"] - 0.05  # and the model still works


def test_every_row_carries_the_comparison_fields(report: dict[str, Any]) -> None:
    for label in ("partial_amnesiac", "none", "finetune", "RT"):
        row = report["rows"][label]
        assert row["forget_metric"] == "ASR"
        assert {"forget_gap_rt", "forget_gain_vs_none", "discriminating", "cost_seconds"} <= set(row)


def test_the_served_request_is_receipted_with_its_verification(report: dict[str, Any], tmp_path: Path) -> None:
    out = Path(report["config"]["run.out-dir"])
    results = json.loads((out / "runs" / "partial_amnesiac" / "results.json").read_text())
    (phase,) = [e for e in results["events"] if e["type"] == "unlearning"]
    assert phase["status"] == "served"
    assert phase["metrics"]["no_trace"] == 0.0  # the criterion failed before the phase: it did work
    receipt = phase["receipt"]
    assert "num_samples" not in receipt and len(receipt["ids_hmac"]) == 64  # the server's copy
    node = json.loads(
        (
            out / "runs" / "partial_amnesiac" / "state" / "client-1" / "receipts" / f"{phase['request_id']}.json"
        ).read_text()
    )
    assert node["num_samples"] == 50  # 10% of client 1's 500 records
    assert node["metrics"]["check_passed"] == 1.0 and node["metrics"]["check_ASR"] <= 0.02
