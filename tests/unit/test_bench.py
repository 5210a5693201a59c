"""The benchmark's plumbing with fake cell results: profiles, per-method settings,
resuming (finished cells are reused, failed ones are not written), results.json schema,
report.md (best per column, headline) and the plots.

A real cell is a Flower simulation of a few minutes on this machine (Ray start-up alone
takes about a minute), so the end-to-end path is exercised by ``fedunlearn bench --profile
quick``, not here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import simulations.bench as bench
from fedunlearn.errors import ConfigError
from server.bench_app import CellPlan, method_of, with_method
from simulations.bench_profiles import QUICK, TUNING_GRID, Cell, Deletion, Profile, largest_share
from simulations.bench_report import cell_table, headline, runs_of, storage_bytes, targets_met, write_outputs

RUN_KEYS = {
    "dataset",
    "model",
    "partition",
    "deletion",
    "method",
    "seed",
    "FA",
    "RA",
    "TA",
    "MIA",
    "avg_gap_rt",
    "kl_rt_forget",
    "kl_rt_test",
    "backdoor_asr",
    "unlearn_seconds",
    "retrain_seconds",
    "messages",
    "history_bytes",
    "dense_history_bytes",
}
MICRO = dataclasses.replace(
    QUICK,
    name="micro",
    datasets=("digits",),
    models=("mlp",),
    samples_per_client=60,
    test_samples=50,
    sweep=(Deletion("sample", 1, amount=4),),
)


def fake_row(method: str, fa: float, *, asr: float | None = None, seconds: float = 2.0) -> dict[str, Any]:
    """A row shaped like ``evaluate_cell``'s (RT has FA 0.90, RA 0.95, TA 0.93, MIA 0.40)."""
    rt = {"FA": 0.90, "RA": 0.95, "TA": 0.93, "MIA": 0.40}
    row = {
        "method": method,
        "FA": fa,
        "RA": 0.95,
        "TA": 0.93,
        "MIA": 0.40,
        "mia_entropy": 0.3,
        "kl_rt_forget": 0.1,
        "kl_rt_test": 0.05,
        "backdoor_asr": asr,
        "unlearn_seconds": 100.0 if method == "RT" else seconds,
        "retrain_seconds": 100.0,
        "messages": 40,
        "history_bytes": 300,
        "dense_history_bytes": 10_000,
        "served": 1,
        "deferred_reasons": [],
    }
    row["avg_gap_rt"] = 100 * sum(abs(row[k] - rt[k]) for k in rt) / 4
    return row


def fake_cell(cell: Cell, methods: dict[str, float]) -> dict[str, Any]:
    """A finished cell record as ``bench.cell_record`` writes it."""
    asr = 0.1 if cell.deletion.kind == "client" else None
    rows = [
        fake_row("before", 0.99, asr=asr),
        *(fake_row(m, fa, asr=asr) for m, fa in methods.items()),
        fake_row("RT", 0.90, asr=asr),
    ]
    result = {
        "rows": rows,
        "num_forget": 80,
        "num_retain": 3920,
        "server_log_bytes": 5000,
        "affected": {"client-1": {"affected": 30, "steps": 120}},
        "curves": {
            "round": [0, 1, 2],
            "train_FA": [0.1, 0.8, 0.99],
            "train_RA": [0.1, 0.8, 0.95],
            "RT_FA": [0.1, 0.7, 0.9],
            "RT_RA": [0.1, 0.8, 0.95],
        },
    }
    return {
        "cell_id": cell.cell_id,
        "dataset": cell.dataset,
        "model": cell.model,
        "partition": cell.partition,
        "seed": cell.seed,
        "role": cell.role,
        "deletion": dataclasses.asdict(cell.deletion),
        "deletion_detail": "test",
        "methods": list(methods),
        "method_settings": {},
        "wall_seconds": 60.0,
        "result": result,
    }


def test_quick_profile_has_every_deletion_kind_on_iid_lenet_and_a_growing_sweep() -> None:
    cells = QUICK.cells()
    main = [c for c in cells if c.role == "main"]
    assert {c.deletion.kind for c in main} == {"sample", "class", "client"}
    assert {(c.dataset, c.model, c.partition) for c in main} == {("mnist", "lenet", "iid")}
    sweep = [c.deletion.amount or 0 for c in cells if c.role == "sweep"]
    assert sweep == sorted(sweep) and len(sweep) >= 2
    assert len({c.cell_id for c in cells}) == len(cells)


def test_federaser_only_in_client_cells_and_unregistered_methods_dropped() -> None:
    cells = {c.deletion.kind: c for c in QUICK.cells() if c.role == "main"}
    available = {"partial_amnesiac", "sfr_on", "federaser"}
    assert QUICK.methods(cells["client"], available) == ["partial_amnesiac", "sfr_on", "federaser"]
    assert QUICK.methods(cells["sample"], available) == ["partial_amnesiac", "sfr_on"]


def test_cell_config_schedules_the_deletion_after_the_last_round(tmp_path: Path) -> None:
    cell = next(c for c in QUICK.cells() if c.deletion.kind == "client")
    config = QUICK.federation_config(cell, out_dir=tmp_path / "c", data_root=None)
    assert config.deletion_schedule == f"{QUICK.rounds}:4:client"
    assert config.backdoor.client == 4 and config.history.record_full
    assert config.state_root == str(tmp_path / "c" / "state")
    assert Deletion("class", 2).schedule(last_round=3, label=6) == "3:2:class:6"
    assert Deletion("sample", 1, amount=8).schedule(last_round=3) == "3:1:sample:8"


def test_largest_share_picks_the_class_the_client_holds_most_of() -> None:
    counts = np.array([[50, 10, 40], [50, 90, 5], [0, 0, 55]])
    assert largest_share(counts, client=1) == (1, pytest.approx(0.9))
    assert largest_share(counts, client=0, min_count=45) == (0, pytest.approx(0.5))  # 40/100 of class 2 is too few


def test_tuning_plan_labels_every_variant_with_its_overrides() -> None:
    cell = next(c for c in QUICK.cells() if c.deletion.kind == "sample")
    labels, overrides = bench.method_plan(QUICK, cell, {"sfr_on", "finetune"}, tune=True)
    assert labels == [f"sfr_on@{k}" for k in range(len(TUNING_GRID["sfr_on"]))] + [
        f"finetune@{k}" for k in range(len(TUNING_GRID["finetune"]))
    ]
    assert overrides["sfr_on@1"] == dict(TUNING_GRID["sfr_on"][1])


def test_method_label_settings_reach_the_unlearn_config(tmp_path: Path) -> None:
    cell = next(c for c in QUICK.cells() if c.deletion.kind == "sample")
    config = QUICK.federation_config(cell, out_dir=tmp_path, data_root=None)
    tuned = with_method(config, "sfr_on@2", {"sfr-iters": 30, "unlearn-outer-steps": 1})
    assert (tuned.unlearn.method, tuned.unlearn.sfr_iters, tuned.unlearn.outer_steps) == ("sfr_on", 30, 1)
    assert tuned.history == config.history and method_of("pga") == "pga"


def test_cell_plan_refuses_overrides_that_would_change_training() -> None:
    with pytest.raises(ConfigError, match="unlearn-"):
        CellPlan({}, ["sfr_on"], {"sfr_on": {"keep-ratio": 0.5}})
    with pytest.raises(ConfigError, match="not in methods"):
        CellPlan({}, ["sfr_on"], {"finetune": {"unlearn-epochs": 1}})


def test_runs_rows_have_the_issue_schema_fractions_and_rt(tmp_path: Path) -> None:
    cell = next(c for c in QUICK.cells() if c.deletion.kind == "client")
    rows = runs_of(fake_cell(cell, {"partial_amnesiac": 0.92, "federaser": 0.90, "sfr_on": 0.5}))
    assert all(RUN_KEYS <= set(r) for r in rows)
    assert [r["method"] for r in rows if r["method"] == "RT"] == ["RT"]
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("FA", "RA", "TA", "MIA", "backdoor_asr"))
    by = {r["method"]: r for r in rows}
    assert by["partial_amnesiac"]["history_fraction"] == pytest.approx(0.03)
    assert by["federaser"]["history_bytes"] == 5000 and by["sfr_on"]["history_bytes"] == 0
    assert by["sfr_on"]["time_fraction_rt"] == pytest.approx(0.02)
    assert by["RT"]["affected_fraction"] == pytest.approx(0.25)
    assert by["sfr_on"]["avg_gap_rt_acc"] == pytest.approx(100 * 0.4 / 3)  # FA/RA/TA only, no MIA term


def test_storage_is_what_each_method_needs() -> None:
    row = {"history_bytes": 7, "dense_history_bytes": 100}
    assert [
        storage_bytes(m, {"server_log_bytes": 50}, row) for m in ("partial_amnesiac@1", "amnesiac", "federaser", "pga")
    ] == [7, 100, 50, 0]


def test_table_bolds_the_value_closest_to_rt_not_the_largest() -> None:
    cell = next(c for c in QUICK.cells() if c.deletion.kind == "sample")
    rows = runs_of(fake_cell(cell, {"partial_amnesiac": 0.91, "label_flip": 0.99, "sfr_on": 0.5}))
    lines = {line.split(" |")[0].lstrip("| "): line for line in cell_table(rows)}
    assert "**91.0**" in lines["partial_amnesiac"]
    assert "**" not in lines["label_flip"].split("|")[2] and "**" not in lines["RT"]


def test_headline_takes_the_closest_fedunlearn_method_and_checks_targets() -> None:
    cell = next(c for c in QUICK.cells() if c.deletion.kind == "sample")
    rows = runs_of(fake_cell(cell, {"partial_amnesiac": 0.93, "sfr_on": 0.91, "finetune": 0.90}))
    (best,) = headline(rows)
    assert best["method"] == "sfr_on"  # finetune is closer but is a baseline, not a fedunlearn method
    met = targets_met(best)
    assert met["Avg.D <= 1.5"] and met["history <= 5% dense"] and not met["time <= 1% RT"]


ENV = {
    "cpu_count": 2,
    "load_average": [1.0, 1.0, 1.0],
    "python": "3",
    "torch": "2",
    "flwr": "1",
    "git_commit": "abc",
    "git_dirty": False,
}


def test_outputs_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simulations.bench_plots.write_plots", lambda cells, rows, out: [])
    cells = [fake_cell(c, {"partial_amnesiac": 0.92, "amnesiac": 0.85}) for c in QUICK.cells()]
    paths = write_outputs(
        QUICK,
        cells,
        [{"cell_id": "x", "status": "skipped", "reason": "no data"}],
        tmp_path,
        env=ENV,
        tune=True,
        wall_seconds=1.0,
    )
    assert {p.name for p in paths} == {"results.json", "report.md", "tuning.md"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["profile"] == "quick" and len(results["headline"]) == 3
    assert "x: skipped — no data" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("name", ["fig_forget_retain", "fig_affected_batches", "fig_cost_vs_gap"])
def test_each_plot_is_drawn_from_the_cells(tmp_path: Path, name: str) -> None:
    import simulations.bench_plots as plots

    cells = [fake_cell(c, {"partial_amnesiac": 0.92, "amnesiac": 0.85}) for c in QUICK.cells()]
    rows = [r for c in cells for r in runs_of(c)]
    draw = {
        "fig_forget_retain": lambda: plots.plot_forget_retain(cells, tmp_path / "a.png"),
        "fig_affected_batches": lambda: plots.plot_affected_batches(rows, tmp_path / "a.png"),
        "fig_cost_vs_gap": lambda: plots.plot_cost_vs_gap(rows, tmp_path / "a.png"),
    }[name]
    assert draw() == tmp_path / "a.png"
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_reuses_finished_cells_and_retries_failed_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []

    def fake_run_cells(cells: list[Any], *, on_result: Any, **_: Any) -> None:
        ran.append([Path(config.out_dir).name for config, _, _ in cells])
        for index, (config, _methods, _) in enumerate(cells):
            ok = "client" not in str(config.out_dir)
            on_result(index, {"rows": []} if ok else None, None if ok else RuntimeError("boom"))

    monkeypatch.setattr("simulations.bench_cell.run_cells", fake_run_cells)
    monkeypatch.setattr(bench, "available_methods", lambda: {"partial_amnesiac"})
    monkeypatch.setattr(bench, "dataset_problem", lambda *a: "")
    monkeypatch.setattr(bench, "class_major", lambda *a, **k: (3, 0.5))
    for _ in range(2):
        planned = bench.plan(MICRO, tmp_path, data_root=None)
        bench.run_pending(planned, tmp_path, cpus=1, deadline=None, keep_state=False)
    assert len(ran[0]) == 4 and ran[1] == [c for c in ran[0] if "client" in c]
    assert sorted(p.name for p in (tmp_path / "cells").glob("*.json")) == sorted(
        f"{c}.json" for c in ran[0] if "client" not in c
    )
    failed = [p for p in planned if p.status == "failed"]
    assert len(failed) == 1 and "boom" in failed[0].reason


def test_a_missing_dataset_is_skipped_with_its_reason(tmp_path: Path) -> None:
    profile: Profile = dataclasses.replace(MICRO, datasets=("mnist",))
    planned = bench.plan(profile, tmp_path, data_root=str(tmp_path / "empty"))
    assert {p.status for p in planned} == {"skipped"}
    assert all("'mnist' not available" in p.reason and "empty" in p.reason for p in planned)
