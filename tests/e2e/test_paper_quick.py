"""End to end: Figure 1 on real MNIST (3,200 images, MLP, 2 epochs), then the claims checker on it.

Asserts what would break if the fixed batches, the histories, the curves or RT were wrong;
the paper's "partial amnesiac keeps RA" is not asserted (it does not hold when the deleted
class sits in every batch: see docs/PAPER_CLAIMS.md), only reported by the claims table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.paper.commands import main

pytestmark = pytest.mark.e2e


def test_fig1_on_real_mnist_and_its_claims(tmp_path: Path, data_root: Path) -> None:
    # Prepare: MLP on 3,200 MNIST images = 50 fixed batches of 64, 2 epochs; forget class 3.
    args = ["--out", str(tmp_path / "fig1"), "--data-root", str(data_root), "--quick"]
    args += ["--models", "mlp", "--epochs", "2", "--train-samples", "3200"]

    # Execute
    assert main(["fig1", *args]) == 0
    assert main(["claims", "--fig1", str(tmp_path / "fig1"), "--out", str(tmp_path / "claims")]) == 0

    # Assert
    cell = json.loads((tmp_path / "fig1" / "fig1.json").read_text())["cells"]["mlp"]
    original, rt, curves = cell["original"], cell["references"]["RT"], cell["curves"]
    assert original["FA"] > 0.7 and original["RA"] > 0.75  # the model learned, class 3 included
    assert rt["FA"] < 0.1 and rt["RA"] > 0.75  # retrained without class 3: never predicts it
    assert cell["recorded_steps"] == 100 == curves["amnesiac"]["budget"]  # class 3 in all 50 batches x 2 epochs
    assert curves["amnesiac"]["RA"][-1] < 0.3  # every step undone: back to the initial weights
    assert curves["partial_label_flip"]["FA"][-1] < original["FA"] - 0.3  # flipping labels forgets
    assert (tmp_path / "fig1" / "fig1.png").stat().st_size > 20_000
    table = (tmp_path / "claims" / "claims.md").read_text()
    assert "| fig1 | mlp | partial amnesiac keeps RA without fine-tuning |" in table


def test_fig1_federated_curves_come_from_the_flower_federation(tmp_path: Path, data_root: Path) -> None:
    # Prepare: 5 Flower clients on 3,200 MNIST images, 2 rounds; client 1 holds and deletes class 3.
    out = tmp_path / "fig1"
    args = ["--out", str(out), "--data-root", str(data_root), "--quick", "--federated"]
    args += ["--models", "mlp", "--epochs", "2", "--train-samples", "3200"]

    # Execute
    assert main(["fig1", *args]) == 0

    # Assert
    cell = json.loads((out / "fig1-federated.json").read_text())["cells"]["mlp"]
    original, rt, curves = cell["original"], cell["references"]["RT"], cell["curves"]
    assert cell["federation"]["clients"] == 5 and cell["federation"]["rounds"] == [1, 2]
    assert rt["FA"] < 0.02  # RT's federation never saw class 3: it never predicts it
    assert set(cell["references"]) == {"RT", "amnesiac+ft"}
    for label in ("amnesiac", "partial_amnesiac"):
        curve = curves[label]
        assert len(curve["steps"]) == 3 and curve["steps"][0] == 0  # before, then after each round's steps
        assert 0 < curve["steps"][1] < curve["steps"][2] == curve["budget"] <= cell["recorded_steps"]
        assert cell["endpoint_gap"][label] < 1e-5  # the curve ends at the client's own correction
    for label, curve in curves.items():
        assert curve["FA"][0] == original["FA"] and curve["RA"][0] == original["RA"], label
    assert not (out / "fig1.json").exists()  # the centralized figure's files are left alone
    assert (out / "fig1-federated.png").stat().st_size > 20_000


def test_fig1_federated_refuses_a_sample_deletion_before_training(tmp_path: Path, data_root: Path) -> None:
    # Execute / Assert: the federated run deletes the class its client holds, nothing else
    with pytest.raises(SystemExit, match="--federated deletes the class"):
        main(["fig1", "--out", str(tmp_path), "--data-root", str(data_root), "--federated", "--delete", "sample"])
    assert not any(tmp_path.iterdir())
