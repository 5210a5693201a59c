"""``fedunlearn simulate``: one federation as a real Flower simulation, and with a deletion
schedule its comparison: the method next to ``none``, ``finetune`` and RT.

    fedunlearn simulate --dataset mnist --model lenet --clients 5 --rounds 3 --out runs/demo
    fedunlearn simulate ... --deletion-schedule "3:1:sample:0.1" --method partial_amnesiac

Any run-config key can be set with ``--set section.key=value`` (e.g. ``--set train.lr=0.1``).
Every input is checked before Ray starts; a mistake gives one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedunlearn.config import FederationConfig
from fedunlearn.errors import FedUnlearnError
from simulations import out_dir
from simulations.cli_options import add_federation_options, config_from_args
from simulations.comparison import CONTROLS, RT, Comparison, plan_runs
from simulations.driver import EngineRun, Interrupted, run_simulation_of
from simulations.plots_federated import plot_comparison, plot_training
from simulations.preflight import preflight
from simulations.scoring import score_comparison

logger = logging.getLogger("simulations.simulate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedunlearn simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_federation_options(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        preflight(config, methods=[config.unlearn.method])
        out = Path(config.run.out_dir or ".")
        out_dir.prepare(out, overwrite=args.overwrite, resume=args.resume)
    except (FedUnlearnError, out_dir.OutDirError) as err:
        print(f"fedunlearn simulate: {_one_line(err)}", file=sys.stderr)
        return 2
    _log_to_console()
    hint = f"rerun the same command with --resume to continue (pending requests are kept in {out})"
    try:
        if not config.experiment.deletion_schedule:
            return _train_only(config, cpus=args.cpus, hint=hint)
        comparison = Comparison(config, (config.unlearn.method, *CONTROLS), out, with_rt=not args.no_rt)
        report = run_comparison(comparison, cpus=args.cpus, hint=hint)
    except Interrupted:
        return 130
    print_report(report, out)
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _log_to_console() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("fedunlearn").addHandler(handler)
    logging.getLogger("fedunlearn").setLevel(logging.INFO)


def _train_only(config: FederationConfig, *, cpus: int, hint: str) -> int:
    """No schedule: one engine run (resumed from its checkpoint when asked)."""
    out = Path(config.run.out_dir or ".")
    run = EngineRun("federation", lambda: out_dir.resumable(config))
    errors = _run([run], config, cpus=cpus, hint=hint)
    if errors:
        raise errors[0]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    png = plot_training(results, out / "training.png")
    last = results["rounds"][-1] if results["rounds"] else None
    if last is not None:
        print(f"final test accuracy {last['test_accuracy']:.4f} after {last['round']} rounds")
    print(f"results: {out / 'results.json'}; model: {out / 'model.pt'}; plot: {png}")
    return 0


def run_comparison(comparison: Comparison, *, cpus: int, hint: str = "") -> dict[str, Any]:
    """Run (or finish) every engine run of ``comparison``, score it, write ``comparison.json``."""
    runs = [r for r in plan_runs(comparison) if not out_dir.finished(comparison.run_dir(r.name.split("#")[0]))]
    if runs:
        errors = _run(runs, comparison.config, cpus=cpus, hint=hint)
        if errors:
            raise errors[0]
    report = {
        "schedule": comparison.config.experiment.deletion_schedule,
        "labels": list(comparison.labels),
        "config": _flat(comparison.config),
        **score_comparison(comparison),
    }
    from fedunlearn.atomic import write_json_atomic

    write_json_atomic(comparison.out / "comparison.json", report)
    plot_comparison(report, comparison.out / "comparison.png")
    trunk = json.loads((comparison.run_dir("trunk") / "results.json").read_text(encoding="utf-8"))
    plot_training(trunk, comparison.out / "training.png")
    return report


def _flat(config: FederationConfig) -> dict[str, Any]:
    from fedunlearn.run_config import config_to_flat

    return dict(config_to_flat(config))


def _run(runs: list[EngineRun], config: FederationConfig, *, cpus: int, hint: str) -> list[BaseException]:
    from tqdm import tqdm

    errors: list[BaseException] = []
    bar = tqdm(total=len(runs), desc="engine runs", unit="run")

    def done(name: str, error: BaseException | None) -> None:
        bar.update(1)
        bar.write(f"[{time.strftime('%H:%M:%S')}] {name}: {'failed: ' + _one_line(error) if error else 'done'}")
        if error is not None:
            errors.append(error)

    try:
        run_simulation_of(runs, num_clients=config.data.num_clients, cpus=cpus, on_done=done, resume_hint=hint)
    finally:
        bar.close()
    return errors


def print_report(report: dict[str, Any], out: Path) -> None:
    """The comparison as a table: each label next to ``none``, ``finetune`` and RT."""
    metric = report["forget_metric"]
    rows = report["rows"]
    flag = "" if report["discriminating"] else "  (NOT discriminating: none is within 1 point of RT)"
    print(f"\nschedule {report['schedule']!r}; forget metric {metric}{flag}")
    header = (
        f"{'label':<22}{metric:>8}{'gap RT':>9}{'gain':>8}{'FA':>8}{'RA':>8}{'TA':>8}{'MIA':>8}{'Avg.D':>8}{'s':>8}"
    )
    print(header)
    for label, row in rows.items():
        gain = row["forget_gain_vs_none"]
        print(
            f"{label:<22}{_pct(row.get(metric)):>8}{row['forget_gap_rt']:>9.2f}"
            f"{(f'{gain:.2f}' if gain is not None else '-'):>8}{_pct(row['FA']):>8}{_pct(row['RA']):>8}"
            f"{_pct(row['TA']):>8}{_pct(row['MIA']):>8}{row['avg_gap_rt']:>8.2f}{row.get('cost_seconds', 0):>8.1f}"
        )
    rt = rows.get(RT, {})
    print(f"RT trained {rt.get('rounds', '?')} rounds in {rt.get('cost_seconds', 0):.1f} s")
    print(f"written: {out / 'comparison.json'}, {out / 'comparison.png'}")


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
