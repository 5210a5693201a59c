"""The SFR-on comparison finds a comparison's SFR-on labels and refuses a folder without a trunk."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.sfr_compare import labels_in, main


def test_the_sfr_on_labels_with_a_model_are_found(tmp_path: Path) -> None:
    for name, finished in [("sfr_on", True), ("sfr_on-at-uniform", True), ("sfr_on-at-broken", False), ("none", True)]:
        (tmp_path / "runs" / name).mkdir(parents=True)
        if finished:
            (tmp_path / "runs" / name / "model.pt").write_bytes(b"")
    assert labels_in(tmp_path) == ["sfr_on", "sfr_on@uniform"]


def test_a_folder_without_a_trained_trunk_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "runs/trunk/model.pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
