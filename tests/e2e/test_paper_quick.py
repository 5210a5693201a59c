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
