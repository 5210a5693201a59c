"""The figure commands on small real or generated data: JSON, PNG, resuming, the OrganAMNIST fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.datafiles import write_medmnist_npz

from fedunlearn.errors import ConfigError, DataNotFoundError
from simulations.paper import fig2, fig4
from simulations.paper.cli import load_data
from simulations.paper.commands import main as paper_main
from simulations.paper.settings import PaperSetup

MICRO = ["--models", "mlp", "--epochs", "1"]


@pytest.fixture(scope="module")
def organ_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    """Figure 2 on a generated organamnist.npz (official layout, 11 classes, 128 training images)."""
    root, out = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("fig2")
    write_medmnist_npz(root, "organamnist", num_classes=11, n_train=128, n_test=64, seed=1)
    code = paper_main(["fig2", "--out", str(out), "--data-root", str(root), "--quick", *MICRO])
    assert code == 0
    yield json.loads((out / "fig2.json").read_text()), out


@pytest.fixture(scope="module")
def affected_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    """Figure 4 on 100 digits in 100 batches of one, one deleted sample per affected batch."""
    out = tmp_path_factory.mktemp("fig4")
    setup = PaperSetup(dataset="digits", models=("mlp",), epochs=1, train_samples=100, batch_size=1, delete="sample")
    yield fig4.run(setup, out=out, data_root=None, fresh=False, rt=False), out


def test_fig2_reads_organamnist_from_the_official_npz_layout(organ_run: tuple[dict[str, Any], Path]) -> None:
    data, out = organ_run

    facts, cell = data["data"], data["cells"]["mlp"]

    assert data["status"] == "complete" and facts["used"] == "organamnist" and "fallback_reason" not in facts
    assert facts["num_classes"] == 11 and facts["train_size"] == 128
    assert {"amnesiac", "partial_amnesiac", "label_flip", "partial_label_flip"} <= set(cell["curves"])
    assert cell["deletion"] == {
        "kind": "class",
        "forget_class": 3,
        "size": cell["deletion"]["size"],
        "affected_fraction": 1.0,
    }
    assert (out / "fig2.png").stat().st_size > 10_000


def test_curves_start_at_the_original_model_and_end_at_their_budget(organ_run: tuple[dict[str, Any], Path]) -> None:
    cell = organ_run[0]["cells"]["mlp"]

    for label, curve in cell["curves"].items():
        assert curve["steps"][0] == 0 and curve["FA"][0] == cell["original"]["FA"], label
        assert curve["diverged_at"] is not None or curve["steps"][-1] == curve["budget"], label
    assert cell["curves"]["amnesiac"]["budget"] == cell["recorded_steps"]  # the class is in every batch


def test_fig2_falls_back_only_when_no_dataset_was_asked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[str | None] = []

    def fake_run(figure: str, setup: PaperSetup, **kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs["fallback"])
        return {"data": {"used": setup.dataset}, "cells": {}, "wall_seconds": 0.0}

    monkeypatch.setattr(fig2, "run_models", fake_run)
    fig2.main(["--out", str(tmp_path)])
    fig2.main(["--out", str(tmp_path), "--dataset", "mnist"])

    assert seen == ["mnist", None]


def test_a_missing_file_falls_back_with_the_reason_or_fails_naming_it(tmp_path: Path) -> None:
    setup = PaperSetup(dataset="organamnist", models=("mlp",), epochs=1)

    bundle, used, facts = load_data(setup, data_root=str(tmp_path), fallback="digits")

    assert bundle.name == "digits" and used.dataset == "digits" and facts["requested"] == "organamnist"
    assert "organamnist.npz" in facts["fallback_reason"]
    with pytest.raises(DataNotFoundError, match="organamnist.npz"):
        load_data(setup, data_root=str(tmp_path))


def test_fig4_places_every_share_exactly(affected_run: tuple[dict[str, Any], Path]) -> None:
    data, out = affected_run

    points = sorted(data["cells"].values(), key=lambda c: c["target_fraction"])

    assert [p["target_fraction"] for p in points] == list(fig4.FRACTIONS)
    for p in points:
        assert p["affected_fraction"] == p["measured_affected_fraction"] == p["target_fraction"]
        assert p["forget_size"] == round(100 * p["target_fraction"])  # one sample in each affected batch
        assert set(p["methods"]) == {"amnesiac", "partial_amnesiac"}
    assert (out / "fig4.png").stat().st_size > 10_000


def test_fig4_skips_finished_points_and_refuses_other_settings(affected_run: tuple[dict[str, Any], Path]) -> None:
    data, out = affected_run
    setup = PaperSetup(dataset="digits", models=("mlp",), epochs=1, train_samples=100, batch_size=1, delete="sample")

    again = fig4.run(setup, out=out, data_root=None, fresh=False, rt=False)

    assert again["cells"] == json.loads(json.dumps(data["cells"]))  # read back, not recomputed
    with pytest.raises(ConfigError, match="--fresh"):
        fig4.run(setup.replace(seed=1), out=out, data_root=None, fresh=False, rt=False)


def test_paper_command_lists_its_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert paper_main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert all(name in shown for name in ("fig1", "fig2", "fig3", "fig4", "sweep", "claims"))
