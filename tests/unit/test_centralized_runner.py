"""The centralized runner's plumbing: profiles, forget sets, the results.json schema, skipped data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedunlearn.data import IndexedDataset
from fedunlearn.errors import ConfigError, UnknownNameError
from simulations.centralized import parse_args, run
from simulations.centralized_profiles import (
    METHODS,
    SCENARIOS,
    DatasetSpec,
    MethodSpec,
    Profile,
    get_profile,
    restrict,
    sweep_forget_sets,
)
from simulations.centralized_training import method_settings
from simulations.plots import markdown_table

ROW_KEYS = {
    "dataset",
    "model",
    "scenario",
    "method",
    "keep_ratio",
    "FA",
    "RA",
    "TA",
    "MIA",
    "avg_gap_rt",
    "kl_rt_forget",
    "seconds",
}
MICRO_LABELS = ("RT", "amnesiac", "partial_amnesiac", "finetune")


def micro_profile(datasets: tuple[DatasetSpec, ...] | None = None) -> Profile:
    """Digits (bundled with scikit-learn), a tiny MLP run, four methods, both scenarios."""
    return Profile(
        name="micro",
        datasets=datasets or (DatasetSpec("digits", ("mlp",), train_samples=300, test_samples=150),),
        methods=tuple(m for m in METHODS if m.label in MICRO_LABELS),
        epochs=1,
        batch_size=32,
        sweep_batch_fractions=(0.3,),
        curve_points_per_epoch=2,
        curve_eval_samples=100,
        max_shadow=50,
        max_retain_eval=200,
    )


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    out = tmp_path_factory.mktemp("central")
    missing_root = tmp_path_factory.mktemp("no-organamnist")
    datasets = (
        DatasetSpec("digits", ("mlp",), train_samples=300, test_samples=150),
        DatasetSpec("organamnist", ("convnet",)),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and robust on a shared CPU
    try:
        yield run(micro_profile(datasets), out=out, data_root=str(missing_root), seed=0, figures=False), out
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- profiles


def test_builtin_profiles_are_valid_and_cover_every_cell_of_the_issue() -> None:
    quick, full = get_profile("quick"), get_profile("full")

    assert [(d.name, d.models) for d in full.datasets] == [
        ("mnist", ("mlp", "lenet", "resnet9")),
        ("organamnist", ("convnet", "alexnet", "resnet9")),
    ]
    assert quick.datasets[0].name == "mnist" and set(quick.datasets[0].models) == {"mlp", "lenet"}
    assert set(quick.scenarios) == {"class", "random10"}
    assert quick.history_ratios()[0] == 1.0 and quick.keep_ratio in quick.history_ratios()


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="quick"):
        get_profile("huge")


def test_profile_without_rt_or_with_a_bad_keep_ratio_is_rejected_with_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        Profile(name="x", datasets=(), methods=(MethodSpec("amnesiac", "amnesiac"),), epochs=1, keep_ratio=1.5)

    assert "RT" in str(err.value) and "1.5" in str(err.value)


def test_restrict_filters_datasets_and_methods_but_always_keeps_rt() -> None:
    full = get_profile("full")

    small = restrict(full, datasets=["mnist"], models=["mlp"], methods=["partial_amnesiac"])

    assert [(d.name, d.models) for d in small.datasets] == [("mnist", ("mlp",))]
    assert [m.label for m in small.methods] == ["RT", "partial_amnesiac"]
    with pytest.raises(ConfigError, match="cifar"):
        restrict(full, datasets=["cifar"])
    with pytest.raises(ConfigError, match="sgd"):
        restrict(full, methods=["sgd"])


def test_method_settings_fill_shared_defaults_and_refuse_unknown_row_settings() -> None:
    profile = get_profile("quick")

    flip = method_settings(profile.method("label_flip"), profile, "class", extra={"max_steps": 3})  # type: ignore[arg-type]
    retrain = method_settings(profile.method("RT"), profile, "class")  # type: ignore[arg-type]
    tuned = method_settings(profile.method("amnesiac+ft"), profile, "class")  # type: ignore[arg-type]

    assert flip.max_steps == 3 and flip.epochs == 1  # the row's own epochs beat the shared default
    assert retrain.epochs == profile.epochs  # the shared default: train as long as the original
    assert tuned.finetune_epochs == 1 and tuned.lr == 0.05 and not hasattr(tuned, "select_ratio")
    with pytest.raises(ConfigError, match="no field"):
        method_settings(profile.method("amnesiac"), profile, "class", extra={"select_ratio": 0.5})  # type: ignore[arg-type]


def test_cli_arguments_reach_the_profile() -> None:
    args = parse_args(
        ["--profile", "full", "--out", "x", "--datasets", "mnist", "--methods", "amnesiac", "--seed", "3"]
    )

    profile = restrict(get_profile(args.profile), datasets=args.datasets, models=args.models, methods=args.methods)

    assert args.seed == 3 and [d.name for d in profile.datasets] == ["mnist"]
    assert {m.label for m in profile.methods} == {"RT", "amnesiac"}


# ------------------------------------------------------------------------------- forget sets


def test_sweep_forget_sets_are_nested_growing_and_end_with_the_whole_class() -> None:
    ids = np.arange(100, 400)

    sets = sweep_forget_sets(ids, steps_per_epoch=50, fractions=(0.5, 0.05, 0.2), seed=0)

    assert [t for t, _ in sets] == [0.05, 0.2, 0.5, 1.0]
    sizes = [len(s) for _, s in sets]
    assert sizes == sorted(sizes) and sizes[0] >= 1 and sizes[-1] == 300
    for (_, small), (_, big) in zip(sets, sets[1:], strict=False):
        assert set(small) <= set(big)


def test_scenarios_pick_the_class_and_a_seeded_tenth(generator: torch.Generator) -> None:
    labels = torch.randint(0, 10, (200,), generator=generator)
    train = IndexedDataset(torch.randn(200, 4, generator=generator), labels, torch.arange(1000, 1200), 10)
    spec, profile = DatasetSpec("synthetic", ("mlp",), forget_class=3), micro_profile()

    forget_class = SCENARIOS["class"](train, spec, profile, 0)
    first, again = SCENARIOS["random10"](train, spec, profile, 0), SCENARIOS["random10"](train, spec, profile, 0)

    assert set(train.subset_by_ids(forget_class).labels.tolist()) == {3}
    assert len(forget_class) == int((train.labels == 3).sum())
    assert np.array_equal(first, again) and len(first) == round(0.1 * len(train))
    assert not np.array_equal(first, SCENARIOS["random10"](train, spec, profile, 1))


# ------------------------------------------------------------------------------ results.json


def test_results_rows_have_the_issue_schema_with_fractions(micro_run: tuple[dict[str, Any], Path]) -> None:
    data, out = micro_run

    on_disk = json.loads((out / "results.json").read_text())

    assert on_disk["status"] == "complete" and on_disk["runs"] == data["runs"]
    assert data["runs"], "no rows"
    for row in data["runs"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        for key in ("FA", "RA", "TA", "MIA", "keep_ratio"):
            assert 0.0 <= row[key] <= 1.0, (row["method"], key, row[key])
        assert row["seconds"] >= 0 and row["avg_gap_rt"] >= 0 and row["kl_rt_forget"] >= 0


def test_every_cell_has_rt_with_zero_gap_and_every_method(micro_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = micro_run
    cells = {(r["dataset"], r["model"], r["scenario"]) for r in data["runs"]}

    assert cells == {("digits", "mlp", "class"), ("digits", "mlp", "random10")}
    for cell in cells:
        rows = {r["method"]: r for r in data["runs"] if (r["dataset"], r["model"], r["scenario"]) == cell}
        assert set(MICRO_LABELS) | {"original"} == set(rows)
        assert rows["RT"]["avg_gap_rt"] == 0.0 and rows["RT"]["kl_rt_forget"] == 0.0
        expected = 100 * np.mean([abs(rows["amnesiac"][k] - rows["RT"][k]) for k in ("FA", "RA", "TA", "MIA")])
        assert math.isclose(rows["amnesiac"]["avg_gap_rt"], expected, rel_tol=1e-9)
        assert rows["partial_amnesiac"]["keep_ratio"] == 0.1 and rows["amnesiac"]["keep_ratio"] == 1.0


def test_missing_dataset_is_skipped_with_the_expected_file(micro_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = micro_run

    (skipped,) = data["skipped"]

    assert skipped["dataset"] == "organamnist" and "organamnist.npz" in skipped["reason"]
    assert not [r for r in data["runs"] if r["dataset"] == "organamnist"]


def test_curves_sweep_and_history_are_recorded(micro_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = micro_run

    curve = next(c for c in data["curves"] if c["scenario"] == "class")
    sweep_methods = {r["method"] for r in data["affected_batches"]}

    assert curve["epoch"][0] == 0.0 and curve["epoch"][-1] == 1.0 and len(curve["FA"]) == len(curve["epoch"]) >= 3
    assert sweep_methods == {"original", "amnesiac", "partial_amnesiac"}
    assert all(0.0 < r["affected_fraction"] <= 1.0 for r in data["affected_batches"])
    (history,) = data["history"]
    assert history["keep_0.1"]["disk_bytes"] < history["keep_1"]["disk_bytes"]


def test_markdown_table_puts_every_method_next_to_rt(micro_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = micro_run

    table = markdown_table(data["runs"])

    assert table.count("### digits / mlp / forget") == 2
    assert table.count("| RT | 1.00 | ") == 2 and "| partial_amnesiac | 0.10 |" in table
