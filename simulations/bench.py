"""``fedunlearn bench``: methods against ``none``, ``finetune`` and RT, cell by cell, seed by seed.

    fedunlearn bench --profile quick --out results/bench-quick
    fedunlearn bench --profile evidence --out results/evidence --deadline-minutes 120

Each cell and seed is one comparison (``simulations.comparison``) run with the same engine
as ``fedunlearn simulate``; cells with the same number of clients share one Flower
simulation. A finished comparison is scored at once and written to
``OUT/cells/<cell>-s<seed>.json``; a rerun skips what is finished (runs and cells), so a
killed benchmark goes on where it stopped. ``OUT/results.json``, ``OUT/report.md`` and the
PNG plots are then (re)written from every finished cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from flwr.common.config import unflatten_dict

from fedunlearn.atomic import write_json_atomic
from fedunlearn.data import resolve_data_root
from fedunlearn.errors import FedUnlearnError
from fedunlearn.run_config import config_from_sections
from simulations import out_dir
from simulations.bench_profiles import PROFILES, BenchCell, Profile, class_major, with_seeds
from simulations.comparison import Comparison, plan_runs, training_signature
from simulations.driver import EngineRun, Interrupted, run_simulation_of
from simulations.preflight import preflight
from simulations.scoring import score_comparison

logger = logging.getLogger(__name__)


@dataclass
class Planned:
    """One cell and seed of this invocation: its comparison, or why it does not run."""

    cell: BenchCell
    seed: int
    status: str  # "done" | "pending" | "skipped" | "failed"
    comparison: Comparison | None = None
    reason: str = ""
    detail: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def cell_id(self) -> str:
        """``<cell>-s<seed>``: the cell file's name."""
        return f"{self.cell.name}-s{self.seed}"


def cell_file(out: Path, cell_id: str) -> Path:
    """Where a finished cell is stored."""
    return out / "cells" / f"{cell_id}.json"


def labels_of(profile: Profile) -> tuple[str, ...]:
    """The methods, ``none``, and one budget-matched ``finetune`` per method."""
    return (*profile.methods, "none", *(f"finetune@{m}" for m in profile.methods))


def plan(profile: Profile, out: Path, *, data_root: str | None, patterns: Sequence[str] = ()) -> list[Planned]:
    """Every cell and seed of the profile with its status (``patterns``: glob patterns of cell names)."""
    planned = []
    for cell in profile.cells:
        if patterns and not any(fnmatch(cell.name, p) for p in patterns):
            continue
        for seed in profile.seeds:
            item = Planned(cell, seed, "pending")
            try:
                item.comparison, item.detail = _comparison(profile, cell, seed, out, data_root)
            except FedUnlearnError as err:
                item.status, item.reason = "skipped", " ".join(str(err).split())
            if item.status == "pending" and cell_file(out, item.cell_id).exists():
                item.status = "done"
            planned.append(item)
    return _share_trunks(planned)


def _share_trunks(planned: list[Planned]) -> list[Planned]:
    """Cells whose federation trains the same way share one trunk: the first trains it, the
    others copy it (their RT and label runs stay their own)."""
    first: dict[str, Planned] = {}
    for item in planned:
        if item.comparison is None:
            continue
        signature = training_signature(item.comparison)
        owner = first.setdefault(signature, item)
        if owner is not item and owner.comparison is not None:
            item.comparison = dataclasses.replace(item.comparison, trunk_source=owner.comparison.run_dir("trunk"))
    return planned


def _comparison(
    profile: Profile, cell: BenchCell, seed: int, out: Path, data_root: str | None
) -> tuple[Comparison, str]:
    flat = {**profile.flat(cell, seed=seed), "data.root": str(resolve_data_root(data_root)), "train.threads": 1}
    base = config_from_sections(unflatten_dict(flat))
    label, detail = None, cell.description
    if "{label}" in cell.deletion:
        client = int(cell.deletion.split(":")[1])
        label, share = class_major(base.data, client=client, seed=seed)
        detail += f" (class {label}; client {client} holds {100 * share:.0f}% of it)"
    work = out / "work" / f"{cell.name}-s{seed}"
    flat.update(
        {
            "experiment.deletion-schedule": cell.schedule(rounds=base.train.rounds, label=label),
            "run.out-dir": str(work),
            "run.state-root": str(work / "state"),
        }
    )
    config = config_from_sections(unflatten_dict(flat))
    labels = labels_of(profile)
    preflight(config, methods=[lab.split("@")[0] for lab in labels])
    settings = {m: dict(profile.method_settings.get(m, {})) for m in profile.methods}
    return Comparison(config, labels, work, settings=settings), detail


def run_pending(planned: Sequence[Planned], out: Path, *, cpus: int, deadline: float | None) -> None:
    """Run the pending comparisons, grouped by client count (one simulation per group)."""
    pending = [p for p in planned if p.status == "pending" and p.comparison is not None]
    for size in sorted({p.comparison.config.data.num_clients for p in pending if p.comparison}):
        group = [p for p in pending if p.comparison and p.comparison.config.data.num_clients == size]
        runs: list[EngineRun] = []
        last_run: dict[str, Planned] = {}
        for p in group:
            assert p.comparison is not None
            todo = [
                r for r in plan_runs(p.comparison) if not out_dir.finished(p.comparison.run_dir(r.name.split("#")[0]))
            ]
            runs += [EngineRun(f"{p.cell_id}/{r.name}", r.config, r.prepare) for r in todo]
            if todo:
                last_run[f"{p.cell_id}/{todo[-1].name}"] = p
            else:
                _finish(p, out)

        def done(
            name: str,
            error: BaseException | None,
            group: list[Planned] = group,
            last_run: dict[str, Planned] = last_run,
        ) -> None:
            cell_id = name.split("/")[0]
            item = next(p for p in group if p.cell_id == cell_id)
            if error is not None:
                item.errors.append(f"{name}: {' '.join(str(error).split())}")
            print(f"[bench {time.strftime('%H:%M:%S')}] {name}: {'failed' if error else 'done'}", flush=True)
            if name in last_run:
                _finish(item, out)

        run_simulation_of(
            runs,
            num_clients=size,
            cpus=cpus,
            on_done=done,
            keep_going=lambda: deadline is None or time.monotonic() < deadline,
            resume_hint=f"rerun the same command to go on (finished runs in {out} are kept)",
        )


def _finish(item: Planned, out: Path) -> None:
    """Score a comparison whose runs all ran, and store it as a finished cell."""
    assert item.comparison is not None
    if item.errors:
        item.status, item.reason = "failed", "; ".join(item.errors)
        return
    try:
        scored = score_comparison(item.comparison)
    except Exception as err:  # noqa: BLE001 - reported, the other cells go on
        item.status, item.reason = "failed", f"scoring: {err}"
        return
    record = {
        "cell_id": item.cell_id,
        "cell": item.cell.name,
        "seed": item.seed,
        "role": item.cell.role,
        "description": item.detail,
        "schedule": item.comparison.config.experiment.deletion_schedule,
        "labels": list(item.comparison.labels),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **scored,
    }
    write_json_atomic(cell_file(out, item.cell_id), record)
    item.status = "done"


def environment() -> dict[str, Any]:
    """Versions, CPU, platform, git commit and the load while the report was written."""
    import flwr
    import torch

    repo = Path(__file__).resolve().parents[1]
    try:
        git = ["git", "-C", str(repo)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "flwr": flwr.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "load_average": list(os.getloadavg()),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedunlearn bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="cells, seeds and settings")
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (reused: resumes)")
    parser.add_argument("--cpus", type=int, default=2, help="CPU cores for the simulated clients")
    parser.add_argument("--data-root", default=None, help="data folder (default: $FEDUNLEARN_DATA)")
    parser.add_argument("--cells", nargs="*", default=[], help="only cells whose name matches these glob patterns")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="other seeds than the profile's")
    parser.add_argument("--tune", action="store_true", help="run on the profile's tuning seeds (never reported ones)")
    parser.add_argument("--deadline-minutes", type=float, default=None, help="start no new run after this many minutes")
    parser.add_argument("--report-only", action="store_true", help="only rewrite results.json, report.md and plots")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Plan, run what is missing, then write results.json, report.md and the plots."""
    from simulations.bench_report import write_outputs

    args = parse_args(argv)
    profile = PROFILES[args.profile]
    if args.tune or args.seeds:
        profile = with_seeds(profile, tuple(args.seeds) if args.seeds else profile.tune_seeds)
    start = time.monotonic()
    deadline = None if args.deadline_minutes is None else start + 60 * args.deadline_minutes
    try:
        planned = plan(profile, args.out, data_root=args.data_root, patterns=args.cells)
        if not args.report_only:
            out_dir.claim(args.out)
    except (FedUnlearnError, out_dir.OutDirError) as err:
        print(f"fedunlearn bench: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for p in planned:
        print(f"[bench] {p.cell_id}: {p.status}{f' ({p.reason[:160]})' if p.reason else ''}")
    if not args.report_only:
        try:
            run_pending(planned, args.out, cpus=args.cpus, deadline=deadline)
        except Interrupted:
            return 130
    cells = [
        json.loads(cell_file(args.out, p.cell_id).read_text())
        for p in planned
        if cell_file(args.out, p.cell_id).exists()
    ]
    missing = [
        {"cell_id": p.cell_id, "status": p.status, "reason": p.reason or "not run (deadline or --cells)"}
        for p in planned
        if not cell_file(args.out, p.cell_id).exists()
    ]
    for path in write_outputs(
        profile, cells, missing, args.out, env=environment(), wall_seconds=time.monotonic() - start
    ):
        print(f"written: {path}")
    print(f"[bench] {len(cells)} cell(s) done, {len(missing)} not; wall {time.monotonic() - start:.0f} s")
    return 0 if all(m["status"] != "failed" for m in missing) else 1


if __name__ == "__main__":
    raise SystemExit(main())
