"""Unlearning curves and the one adapter to the methods, on a tiny MLP and synthetic data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedunlearn.data import DatasetBundle, IndexedDataset
from fedunlearn.errors import ConfigError
from simulations.centralized_profiles import METHODS, MethodSpec, Profile
from simulations.centralized_training import compute_correction
from simulations.paper.curves import Probe, history_deltas, step_budget, step_curve
from simulations.paper.settings import PaperSetup, row
from simulations.paper.training import Trained, delete, train_model

SETUP = PaperSetup(dataset="synthetic", models=("mlp",), epochs=2, batch_size=16, forget_class=1, eval_samples=200)


def bundle() -> DatasetBundle:
    g = torch.Generator().manual_seed(0)
    n = 320
    labels = torch.arange(n) % 4
    inputs = torch.randn(n, 1, 4, 4, generator=g) + labels.view(-1, 1, 1, 1).float()
    train = IndexedDataset(inputs[:256], labels[:256], torch.arange(256), 4)
    test = IndexedDataset(inputs[256:], labels[256:], torch.arange(256, n), 4)
    return DatasetBundle("synthetic", train, test, 4, (1, 4, 4))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    yield train_model(SETUP, SETUP.profile(), bundle(), "mlp", workdir=tmp_path_factory.mktemp("hist"))


def test_blockwise_amnesiac_corrections_add_up_to_the_full_correction(trained: Trained) -> None:
    profile = SETUP.profile()
    _, split = delete(trained, SETUP)
    spec = row(profile, "partial_amnesiac")

    points = list(history_deltas(trained, spec, profile, split, blocks=4, seed=0))
    full = compute_correction(trained.cell, spec, profile, split, scenario="paper", seed=0)

    assert len(points) == 4 and [s for s, _ in points] == sorted(s for s, _ in points)
    assert points[-1][0] == full.cost.history_steps == trained.steps  # class in every batch: all steps
    for key, value in full.delta.items():
        assert torch.allclose(points[-1][1][key], value, atol=1e-6), key


def test_step_budget_is_what_the_method_takes(trained: Trained) -> None:
    profile = SETUP.profile()
    _, split = delete(trained, SETUP)
    spec = row(profile, "partial_label_flip")

    budget = step_budget(spec, profile, len(split.forget))
    correction = compute_correction(trained.cell, spec, profile, split, scenario="paper", seed=0)

    assert budget == correction.cost.extra["steps"] >= 1


def test_a_diverging_ascent_ends_its_curve_where_it_failed(trained: Trained) -> None:
    blowup = MethodSpec("boom", "gradient_ascent", overrides={"lr": 1e30, "epochs": 1, "max_steps": 4, "batch_size": 8})
    profile = Profile(name="t", datasets=SETUP.profile().datasets, methods=(METHODS[0], blowup), epochs=2)
    _, split = delete(trained, SETUP)
    probe = Probe.build(split, trained.cell.test, cap=50, seed=0)

    curve = step_curve(trained, blowup, profile, split, probe, points=5, seed=0)

    assert curve.diverged_at is not None and curve.steps[-1] < curve.diverged_at <= 4
    assert curve.steps[0] == 0 and len(curve.FA) == len(curve.steps)


def test_setup_validation_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        PaperSetup(dataset="mnist", models=(), epochs=0, keep_ratio=1.0, delete="client")  # type: ignore[arg-type]

    message = str(err.value)
    assert all(word in message for word in ("model", "keep_ratio", "delete", "epochs"))


def test_probe_caps_each_set_and_measures_fractions(trained: Trained, tmp_path: Path) -> None:
    _, split = delete(trained, SETUP)

    probe = Probe.build(split, trained.cell.test, cap=10, seed=0)
    values = probe.measure(trained.cell.model)

    assert len(probe.forget) == len(probe.retain) == len(probe.test) == 10
    assert set(values) == {"FA", "RA", "TA"} and all(0.0 <= v <= 1.0 for v in values.values())


def test_when_every_batch_is_affected_the_correction_ignores_which_class_is_deleted(trained: Trained) -> None:
    profile = SETUP.profile()
    spec = row(profile, "partial_amnesiac")

    one = compute_correction(trained.cell, spec, profile, delete(trained, SETUP)[1], scenario="paper", seed=0)
    other = delete(trained, SETUP.replace(forget_class=2))[1]
    two = compute_correction(trained.cell, spec, profile, other, scenario="paper", seed=0)

    assert all(torch.allclose(one.delta[k], two.delta[k]) for k in one.delta)  # same stored steps, same sum
