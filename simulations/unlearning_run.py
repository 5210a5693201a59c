"""A federation with scheduled deletions, its retrain baseline (RT), and the comparison.

``fedunlearn simulate ... --deletion-schedule '3:1:sample:0.1'`` runs:

1. the federation, whose clients file the scheduled requests and whose server serves them
   with the configured method (``<out>/unlearn``);
2. RT: the same federation (same seed, rounds, partitions) with the scheduled samples
   excluded from round 1 and no unlearning (``<out>/retrain``);
3. the comparison: FA/RA/TA/MIA/KL/Avg.D of the unlearned model next to RT, unlearning
   time and messages next to RT's, written to ``<out>/comparison.json`` and plotted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fedunlearn.atomic import write_json_atomic
from fedunlearn.config import FederationConfig
from simulations.compare import compare_to_retrain
from simulations.plots_federated import plot_comparison, plot_training
from simulations.simulate import run_federation


def sub_run(config: FederationConfig, name: str, **changes: Any) -> FederationConfig:
    """The config of one of the runs, in its own folder under the main output folder."""
    out = Path(config.out_dir or "runs/unnamed") / name
    return dataclasses.replace(config, out_dir=str(out), state_root=str(out / "state"), **changes)


def unlearning_cost(results: dict[str, Any]) -> dict[str, Any]:
    """Seconds, messages and bytes of all unlearning phases of a run."""
    phases = [e for e in results["events"] if e.get("type") == "unlearning"]
    return {
        "phases": len(phases),
        "served": sum(e["status"] == "served" for e in phases),
        "seconds": sum(e["seconds"] for e in phases),
        "messages": sum(e["stats"]["messages"] for e in phases),
        "bytes": sum(e["stats"]["bytes"] for e in phases),
    }


def run_with_retrain(config: FederationConfig, *, cpus: int, with_rt: bool = True) -> dict[str, Any]:
    """Run the federation (and RT), compare, write ``comparison.json`` and plots; return it."""
    out = Path(config.out_dir or "runs/unnamed")
    main_config = sub_run(config, "unlearn")
    main = run_federation(main_config, cpus=cpus)
    plot_training(main, out / "unlearn" / "training.png")
    report: dict[str, Any] = {
        "method": config.unlearn.method,
        "schedule": config.deletion_schedule,
        "config": main["config"],
        "events": main["events"],
        "unlearning": unlearning_cost(main),
    }
    if with_rt:
        rt = run_federation(sub_run(config, "retrain", retrain_mode=True), cpus=cpus)
        plot_training(rt, out / "retrain" / "training.png")
        befores = sorted((out / "unlearn" / "models").glob("before-*.pt"))
        report["metrics"] = compare_to_retrain(
            main_config,
            unlearned=out / "unlearn" / "model.pt",
            retrained=out / "retrain" / "model.pt",
            before=befores[0] if befores else None,
            seed=config.seed,
        )
        report["retrain"] = {"seconds": rt["summary"]["train_seconds"], "messages": rt["summary"]["train_messages"]}
        report["unlearning"]["time_fraction_of_rt"] = report["unlearning"]["seconds"] / max(
            report["retrain"]["seconds"], 1e-9
        )
        plot_comparison(report, out / "comparison.png")
    write_json_atomic(out / "comparison.json", report)
    print_report(report, out)
    return report


def print_report(report: dict[str, Any], out: Path) -> None:
    """The comparison as a small table on stdout."""
    cost = report["unlearning"]
    served = f"{cost['served']}/{cost['phases']} phase(s) served"
    print(f"\nmethod {report['method']}, schedule {report['schedule']!r}: {served}")
    metrics = report.get("metrics")
    if metrics:
        keys = ("FA", "RA", "TA", "MIA", "kl_rt_forget", "backdoor_asr")
        print(f"{'model':<10}" + "".join(f"{k:>14}" for k in keys))
        for name in ("before", "unlearned", "RT"):
            if name in metrics:
                row = metrics[name]
                print(f"{name:<10}" + "".join(f"{_fmt(row.get(k)):>14}" for k in keys))
        before = metrics.get("avg_gap_rt_before", float("nan"))
        print(f"Avg.D to RT: {metrics['avg_gap_rt']:.2f} points (before unlearning: {before:.2f})")
        rt = report["retrain"]
        print(
            f"unlearning {cost['seconds']:.1f} s, {cost['messages']} messages; RT {rt['seconds']:.1f} s, "
            f"{rt['messages']} messages ({100 * cost['time_fraction_of_rt']:.1f}% of RT's time)"
        )
    print(f"written: {out / 'comparison.json'}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
