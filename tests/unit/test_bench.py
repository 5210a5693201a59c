"""The benchmark's plan, the judge's comparison fields and verdicts, and the report, on
made-up numbers (no training)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import unflatten_dict

from fedunlearn.run_config import config_from_sections
from fedunlearn.unlearning import method_settings
from simulations import bench
from simulations.bench_profiles import EVIDENCE, PAPER, PROFILES, QUICK
from simulations.bench_report import pooled_cells, run_rows, write_outputs
from simulations.cli_options import config_from_args
from simulations.comparison import Comparison, label_config, method_of, plan_runs
from simulations.judge import compare, ground_truth, verdict
from simulations.scoring import run_cost


def row(**values: float) -> dict[str, Any]:
    base = {"FA": 0.9, "RA": 0.95, "TA": 0.9, "MIA": 0.5, "ASR": None, "mia_std_error": 0.01}
    return {**base, **values}


def test_every_row_gets_gap_gain_and_the_discriminating_flag() -> None:
    rows = {"m": row(FA=0.05), "none": row(FA=0.60), "finetune": row(FA=0.55), "RT": row(FA=0.0)}
    out = compare(rows, forget_metric="FA")
    assert out["none"]["forget_gap_rt"] == pytest.approx(60.0)
    assert out["m"]["forget_gap_rt"] == pytest.approx(5.0)
    assert out["m"]["forget_gain_vs_none"] == pytest.approx(55.0)
    assert out["finetune"]["forget_gain_vs_none"] == pytest.approx(5.0)
    assert all(r["discriminating"] and r["forget_metric"] == "FA" for r in out.values())


def test_a_cell_where_none_sits_at_rt_is_not_discriminating() -> None:
    rows = {"m": row(FA=0.80), "none": row(FA=0.905), "RT": row(FA=0.90)}
    assert not compare(rows, forget_metric="FA")["m"]["discriminating"]


def test_an_mia_gap_inside_its_noise_does_not_make_a_cell_discriminating() -> None:
    noisy = {"none": row(MIA=0.53, mia_std_error=0.02), "RT": row(MIA=0.50, mia_std_error=0.02)}
    clear = {"none": row(MIA=0.90, mia_std_error=0.02), "RT": row(MIA=0.50, mia_std_error=0.02)}
    assert not compare(noisy, forget_metric="FA")["none"]["discriminating"]
    assert compare(clear, forget_metric="FA")["none"]["discriminating"]


@pytest.mark.parametrize(
    ("gains", "gaps", "expected"),
    [
        ([40.0, 42.0, 41.0], [0.5, 1.0, 0.8], "forgets"),
        ([40.0, 42.0, 41.0], [5.0, 6.0, 4.0], "partly"),
        ([0.5, -1.0, 0.2], [40.0, 41.0, 39.0], "no better than doing nothing"),
        ([10.0, -9.0, 1.0], [1.0, 1.0, 1.0], "no better than doing nothing"),  # gain within 2 std
    ],
)
def test_verdict_follows_the_evidence_standard(gains: list[float], gaps: list[float], expected: str) -> None:
    assert verdict(gains, gaps) == expected


def test_profiles_compare_methods_with_none_budget_matched_finetune_and_rt() -> None:
    labels = bench.labels_of(EVIDENCE)
    assert "none" in labels
    for method in EVIDENCE.methods:
        assert method in labels and f"finetune@{method}" in labels
    assert len(EVIDENCE.seeds) >= 3 and not set(EVIDENCE.seeds) & set(EVIDENCE.tune_seeds)
    assert {"poisoned-samples", "mislabelled-samples", "class-only-client"} <= {c.name for c in EVIDENCE.cells}
    assert any(c.name == "poisoned-samples" for c in QUICK.cells)  # a discriminating sample-level cell


def test_the_paper_profile_pairs_each_method_with_its_partial_version_on_the_same_settings(
    tmp_path: Path, data_root: Path
) -> None:
    (item, *_) = bench.plan(PAPER, tmp_path, data_root=str(data_root))
    assert item.comparison is not None

    def settings(label: str) -> Any:
        return method_settings(label_config(item.comparison, label, 10).unlearn)

    for naive in ("amnesiac", "label_flip"):
        naive_settings, partial_settings = settings(naive), settings(f"partial_{naive}")
        assert (naive_settings.outer_steps, naive_settings.remain_steps) == (
            partial_settings.outer_steps,
            partial_settings.remain_steps,
        )
    assert settings("label_flip").lr == settings("partial_label_flip").lr
    assert settings("partial_amnesiac@no-slow").remain_steps == 0 < settings("partial_amnesiac").remain_steps


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_cell_deletes_after_the_last_round_and_plans_trunk_labels_rt(
    profile: str, tmp_path: Path, data_root: Path
) -> None:
    chosen = PROFILES[profile]
    planned = bench.plan(chosen, tmp_path, data_root=str(data_root))
    assert {p.status for p in planned} == {"pending"}
    for item in planned:
        assert item.comparison is not None
        config = item.comparison.config
        assert all(e.round == config.train.rounds for e in item.comparison.entries)  # primary: after the last round
        names = [r.name for r in plan_runs(item.comparison)]
        assert names[0] == "trunk" and names[-1] == "RT"
        assert {n.split("#")[0] for n in names[1:-1]} == set(item.comparison.labels)


def test_a_cell_gets_the_same_config_from_bench_as_from_simulate(tmp_path: Path, data_root: Path) -> None:
    # bench and simulate build the comparison of one cell the same way: same engine, same numbers.
    (item,) = [p for p in bench.plan(QUICK, tmp_path, data_root=str(data_root), patterns=["poisoned-samples"])]
    assert item.comparison is not None
    flat = QUICK.flat(item.cell, seed=item.seed)
    args = argparse.Namespace(
        **{opt: None for opt in ("dataset", "model", "clients", "rounds", "partition", "alpha", "keep_ratio", "seed")},
        **{opt: None for opt in ("local_epochs", "batch_size", "lr", "samples_per_client", "test_samples", "method")},
        deletion_schedule=item.comparison.config.experiment.deletion_schedule,
        data_root=str(data_root),
        out=str(item.comparison.out),
        set=[f"{k}={v}" for k, v in flat.items()],
    )
    assert config_from_args(args) == item.comparison.config


def cell_record(seed: int, *, gain: float) -> dict[str, Any]:
    rows = {
        "partial_amnesiac": row(FA=0.01 + 0.001 * seed),
        "none": row(FA=0.5),
        "finetune@partial_amnesiac": row(FA=0.5 - gain / 100),
        "RT": row(FA=0.0),
    }
    compared = compare(rows, forget_metric="FA")
    for label in compared:
        compared[label].update(statuses=["served"], no_trace=[False], cost_seconds=1.0)
    return {
        "cell_id": f"c-s{seed}",
        "cell": "c",
        "seed": seed,
        "role": "primary",
        "description": "made up",
        "schedule": "5:1:corrupted",
        "forget_metric": "FA",
        "discriminating": True,
        "num_forget": 10,
        "rows": compared,
    }


def test_results_json_has_none_finetune_rt_rows_with_the_issue_fields(tmp_path: Path) -> None:
    cells = [cell_record(s, gain=3.0 + s) for s in (0, 1, 2)]
    written = write_outputs(
        QUICK,
        cells,
        [],
        tmp_path,
        env={
            "cpu_count": 2,
            "load_average": [0, 0, 0],
            "python": "3",
            "torch": "t",
            "flwr": "f",
            "git_commit": "abc",
            "git_dirty": False,
        },
        wall_seconds=1.0,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    (cell,) = results["cells"]
    methods = {r["method"] for r in cell["rows"]}
    assert {"none", "finetune", "RT", "partial_amnesiac"} <= methods
    for r in [*cell["rows"], *results["runs"]]:
        assert {"forget_metric", "forget_gap_rt", "forget_gain_vs_none", "discriminating"} <= set(r)
    pooled = {r["label"]: r for r in cell["rows"]}
    assert pooled["partial_amnesiac"]["verdict"] == "forgets"
    assert pooled["finetune@partial_amnesiac"]["verdict"] == "partly"
    assert pooled["partial_amnesiac"]["forget_gain_vs_none_std"] > 0  # spread over seeds
    assert any(p.name == "report.md" for p in written) and any(p.suffix == ".png" for p in written)


def test_run_rows_keep_the_label_and_name_the_matched_method() -> None:
    rows = run_rows([cell_record(0, gain=3.0)])
    finetune = next(r for r in rows if r["label"] == "finetune@partial_amnesiac")
    assert finetune["method"] == "finetune" and finetune["matched_to"] == "partial_amnesiac"
    assert method_of("finetune@sfr_on") == "finetune"
    assert all(not math.isnan(r["forget_gap_rt"]) for r in rows)


def test_pooled_cells_mark_a_cell_not_discriminating_and_draw_no_verdict() -> None:
    record = cell_record(0, gain=3.0)
    for r in record["rows"].values():
        r["discriminating"] = False
    record["discriminating"] = False
    (cell,) = pooled_cells([record])
    assert not cell["discriminating"]
    assert {r["verdict"] for r in cell["rows"] if r["label"] not in ("RT", "none")} == {"cell not discriminating"}


def test_a_comparison_names_its_runs_and_matches_finetune_to_a_method(tmp_path: Path, data_root: Path) -> None:
    (item,) = bench.plan(QUICK, tmp_path, data_root=str(data_root), patterns=["class-only-client"])
    comparison: Comparison = item.comparison  # type: ignore[assignment]
    assert comparison.methods() == list(QUICK.methods)
    assert comparison.run_dir("finetune@sfr_on").name == "finetune-at-sfr_on"


@pytest.mark.parametrize(
    ("corruption", "schedule", "metric"),
    [
        ({"experiment.corrupt-kind": "trigger"}, "2:0:corrupted", "ASR"),
        ({"experiment.corrupt-kind": "mislabel"}, "2:0:corrupted", "MIA"),
        ({"experiment.corrupt-kind": "mislabel"}, "2:1:sample:5", "FA"),
    ],
)
def test_the_forget_metric_follows_what_the_deleted_records_are(
    tmp_path: Path, corruption: dict[str, str], schedule: str, metric: str
) -> None:
    flat = {
        "data.dataset": "digits",
        "train.model": "mlp",
        "data.num-clients": 2,
        "data.samples-per-client": 60,
        "data.test-samples": 40,
        "data.root": str(tmp_path / "no-data"),
        "experiment.corrupt-client": 0,
        "experiment.corrupt-fraction": 0.1,
        "experiment.deletion-schedule": schedule,
        **corruption,
    }
    truth = ground_truth(config_from_sections(unflatten_dict(flat)), state_root=tmp_path / "state")
    assert truth.forget_metric == metric
    assert len(truth.forget) in (5, 6)  # the scheduled ids, however the client holds them


def test_rt_cost_to_target_is_read_off_its_rounds(tmp_path: Path) -> None:
    rounds = [
        {"round": r, "test_accuracy": acc, "seconds": 10.0, "messages": 4, "bytes_down": 100, "bytes_up": 100}
        for r, acc in enumerate([0.50, 0.80, 0.86, 0.87], start=1)
    ]
    (tmp_path / "results.json").write_text(json.dumps({"rounds": rounds, "events": []}))

    regained = run_cost(tmp_path, retrain=True, target_accuracy=0.85)
    assert regained["rounds_to_target"] == 3 and regained["to_target"]["cost_seconds"] == 30.0
    assert regained["per_round"]["cost_bytes"] == 200.0 and regained["cost_messages"] == 16.0
    # A deleted class is never predicted again: RT's own final accuracy is the target then.
    never = run_cost(tmp_path, retrain=True, target_accuracy=0.97)
    assert never["rounds_to_target"] == 4 and never["target_accuracy"] < 0.87


def test_requests_served_by_one_phase_count_its_cost_once(tmp_path: Path) -> None:
    def event(rid: str, phase: str, seconds: float) -> dict[str, Any]:
        stats = {"phase_id": phase, "messages": 4, "bytes_down": 100, "bytes_up": 50, "round_trips": 2}
        metrics = {"client_steps": 10.0, "client_examples": 640.0, "outer_steps": 1.0}
        return {"type": "unlearning", "round": 5, "request_id": rid, "status": "served", "reason": None,
                "seconds": seconds, "stats": stats, "metrics": metrics}  # fmt: skip

    events = [event("a", "p1", 3.0), event("b", "p1", 3.1), event("c", "p2", 2.0)]  # a and b: one phase
    (tmp_path / "results.json").write_text(json.dumps({"rounds": [], "events": events}))

    cost = run_cost(tmp_path, retrain=False)

    assert cost["phases"] == 3 and cost["phase_count"] == 2
    assert cost["cost_round_trips"] == 4 and cost["cost_messages"] == 8 and cost["cost_bytes"] == 300
    assert cost["cost_client_examples"] == 1280.0 and cost["cost_seconds"] == pytest.approx(5.1)


def test_the_cost_plot_draws_discriminating_cells_only(tmp_path: Path) -> None:
    from simulations.bench_plots import plot_cost

    def pooled_row(label: str, ratio: float, gap: float) -> dict[str, Any]:
        return {"label": label, "ratio_cost_seconds": ratio, "forget_gap_rt": gap}

    rows = [pooled_row("m", 0.01, 0.2), pooled_row("finetune@m", 0.005, 80.0), pooled_row("RT", 1.0, 0.0)]
    cell = {"cell": "c", "forget_metric": "ASR", "discriminating": True, "rows": rows}

    assert plot_cost([cell], tmp_path / "cost.png") == tmp_path / "cost.png"
    assert (tmp_path / "cost.png").stat().st_size > 0
    assert plot_cost([{**cell, "discriminating": False}], tmp_path / "none.png") is None
