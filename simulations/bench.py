"""``fedunlearn bench``: every unlearning method against retraining, on the same runs.

    fedunlearn bench --profile quick --out results/bench-quick
    python -m simulations.bench --profile full --out results/bench-full --deadline-minutes 45
    python -m simulations.bench --profile quick --tune --out results/bench-tune

Runs the profile's cells (``simulations.bench_profiles``); each cell is one training run
whose every method serves the same deletion from the same snapshot, plus RT
(``simulations.bench_cell``). Cells with the same number of clients share one Flower
simulation. Each finished cell is written atomically to ``OUT/cells/<cell-id>.json``; a
rerun reuses finished cells and runs the rest, so a killed run continues where it stopped.
Then ``OUT/results.json``, ``OUT/report.md`` and the PNG plots are (re)written from all
finished cells. ``--tune`` runs the tuning grid on the profile's cells with seed + 1 and
writes ``OUT/tuning.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from fedunlearn.atomic import write_json_atomic
from fedunlearn.config import FederationConfig
from fedunlearn.errors import DataNotFoundError
from simulations.bench_profiles import PROFILES, TUNING_GRID, Cell, Profile, class_major

logger = logging.getLogger(__name__)


@dataclass
class Planned:
    """A cell of this invocation: its config and methods, or why it does not run."""

    cell: Cell
    status: str  # "done" | "pending" | "skipped"
    reason: str = ""
    config: FederationConfig | None = None
    methods: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    detail: str = ""


def cell_file(out: Path, cell_id: str) -> Path:
    """Where a finished cell is stored."""
    return out / "cells" / f"{cell_id}.json"


def available_methods() -> set[str]:
    """Registered client methods plus the server-side phases (FedEraser) that import cleanly."""
    from fedunlearn.unlearning import available_methods as client_methods
    from server.unlearning_phase import phase_runner, run_phase

    names = set(client_methods())
    try:
        importlib.import_module("server.federaser")  # registers the "federaser" phase on the server
    except ImportError as err:
        logger.warning("FedEraser phase not available: %s", err)
    return names | ({"federaser"} if phase_runner("federaser") is not run_phase else set())


def dataset_problem(profile: Profile, cell: Cell, data_root: str | None) -> str:
    """Why the cell's dataset cannot be loaded here ('' when it can)."""
    from fedunlearn.data import load_dataset

    try:
        load_dataset(cell.dataset, root=profile.data_config(cell, data_root=data_root).root)
    except (DataNotFoundError, ImportError) as err:
        return f"dataset {cell.dataset!r} not available on this machine: {err}".splitlines()[0]
    return ""


def method_plan(
    profile: Profile, cell: Cell, available: set[str], *, tune: bool
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Method labels and their settings: tuned ones, or every tuning variant (``name@k``)."""
    names = profile.methods(cell, available)
    if not tune:
        return names, {m: dict(profile.method_settings.get(m, {})) for m in names if profile.method_settings.get(m)}
    labels, overrides = [], {}
    for name in names:
        for k, variant in enumerate(TUNING_GRID.get(name, ({},))):
            labels.append(f"{name}@{k}")
            overrides[f"{name}@{k}"] = dict(variant)
    return labels, {k: v for k, v in overrides.items() if v}


def plan(
    profile: Profile,
    out: Path,
    *,
    data_root: str | None,
    tune: bool = False,
    patterns: Sequence[str] = (),
    method_patterns: Sequence[str] = (),
) -> list[Planned]:
    """Every cell of the profile (tuning: main cells, seed + 1) with its status; ``patterns``
    select cell ids and ``method_patterns`` method labels (glob patterns; empty: all)."""
    available = available_methods()
    cells = profile.cells(seed=profile.seed + 1 if tune else None)
    cells = [c for c in cells if not (tune and c.role == "sweep")]
    cells = [c for c in cells if not patterns or any(fnmatch(c.cell_id, p) for p in patterns)]
    planned = []
    for cell in cells:
        problem = dataset_problem(profile, cell, data_root)
        if problem:
            planned.append(Planned(cell, "skipped", problem))
            continue
        label, detail = None, ""
        if cell.deletion.kind == "class" and cell.deletion.label is None:
            label, share = class_major(
                profile.data_config(cell, data_root=data_root), client=cell.deletion.client, seed=cell.seed
            )
            detail = f"class {label} on client {cell.deletion.client} (it holds {100 * share:.0f}% of that class)"
        config = profile.federation_config(cell, out_dir=out / "work" / cell.cell_id, data_root=data_root, label=label)
        methods, overrides = method_plan(profile, cell, available, tune=tune)
        if method_patterns:
            methods = [m for m in methods if any(fnmatch(m, p) for p in method_patterns)]
            overrides = {m: v for m, v in overrides.items() if m in methods}
        status = "done" if cell_file(out, cell.cell_id).exists() else "pending"
        planned.append(Planned(cell, status, "", config, methods, overrides, detail or _detail(cell)))
    return planned


def _detail(cell: Cell) -> str:
    d = cell.deletion
    if d.kind == "sample":
        amount = f"{100 * d.amount:.0f}%" if d.amount is not None and d.amount < 1 else f"{int(d.amount or 0)} samples"
        return f"{amount} of client {d.client}'s samples"
    if d.kind == "class":
        return f"class {d.label} on client {d.client}"
    return f"client {d.client} (backdoored: trigger -> label 0) leaves"


def run_pending(planned: Sequence[Planned], out: Path, *, cpus: int, deadline: float | None, keep_state: bool) -> None:
    """Run the pending cells, grouped by client count (one simulation per group)."""
    from tqdm import tqdm

    from simulations.bench_cell import run_cells

    pending = [p for p in planned if p.status == "pending"]
    bar = tqdm(total=len(planned), initial=len(planned) - len(pending), desc="bench cells", unit="cell")
    for size in sorted({p.config.data.num_clients for p in pending if p.config is not None}):
        group = [p for p in pending if p.config is not None and p.config.data.num_clients == size]
        for p in group:  # a killed run may have left a half-done cell behind
            shutil.rmtree(out / "work" / p.cell.cell_id, ignore_errors=True)
        clock = {"t": time.monotonic()}

        def finished(
            index: int,
            result: dict[str, Any] | None,
            error: BaseException | None,
            group: list[Planned] = group,
            clock: dict[str, float] = clock,
        ) -> None:
            p, now = group[index], time.monotonic()
            wall, clock["t"] = now - clock["t"], now
            if error is None and result is not None:
                write_json_atomic(cell_file(out, p.cell.cell_id), cell_record(p, result, wall))
                p.status = "done"
                if not keep_state:
                    shutil.rmtree(out / "work" / p.cell.cell_id / "state", ignore_errors=True)
            else:
                p.status, p.reason = "failed", f"{type(error).__name__}: {error}"
            bar.update(1)
            bar.write(f"[bench] cell {p.cell.cell_id}: {p.status} after {wall:.0f} s")

        def say(text: str) -> None:
            bar.write(f"[bench {time.strftime('%H:%M:%S')}] {text}")

        run_cells(
            [(p.config, p.methods, p.overrides) for p in group if p.config is not None],
            cpus=cpus,
            progress=say,
            on_result=finished,
            keep_going=lambda: deadline is None or time.monotonic() < deadline,
        )
    bar.close()


def cell_record(p: Planned, result: dict[str, Any], wall: float) -> dict[str, Any]:
    """What ``OUT/cells/<id>.json`` holds: the cell, its settings and ``evaluate_cell``'s result."""
    return {
        "cell_id": p.cell.cell_id,
        **{k: v for k, v in asdict(p.cell).items() if k != "deletion"},
        "deletion": asdict(p.cell.deletion),
        "deletion_detail": p.detail,
        "methods": p.methods,
        "method_settings": p.overrides,
        "wall_seconds": wall,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "result": result,
    }


def environment() -> dict[str, Any]:
    """Versions, CPU, platform, git commit and the load while the report was written."""
    import flwr
    import torch

    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout
        )
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
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="grid and settings")
    parser.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder (reused: resumes)")
    parser.add_argument("--cpus", type=int, default=2, help="CPU cores for the simulated clients")
    parser.add_argument("--data-root", default=None, help="data folder (default: $FEDUNLEARN_DATA)")
    parser.add_argument("--cells", nargs="*", default=[], help="only cell ids matching these glob patterns")
    parser.add_argument("--methods", nargs="*", default=[], help="only method labels matching these glob patterns")
    parser.add_argument(
        "--deadline-minutes",
        type=float,
        default=None,
        help="start no new cell after this many minutes (finished cells are kept)",
    )
    parser.add_argument("--tune", action="store_true", help="run the tuning grid (seed + 1) instead of the profile")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep client state dirs (histories) of finished cells"
    )
    parser.add_argument("--report-only", action="store_true", help="only rewrite results.json, report.md and plots")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Plan, run what is missing, then write results.json, report.md and the plots."""
    from simulations.bench_report import write_outputs

    args = parse_args(argv)
    profile, start = PROFILES[args.profile], time.monotonic()
    deadline = None if args.deadline_minutes is None else start + 60 * args.deadline_minutes
    planned = plan(
        profile, args.out, data_root=args.data_root, tune=args.tune, patterns=args.cells, method_patterns=args.methods
    )
    for p in planned:
        reason = f" ({p.reason[:120]})" if p.reason else ""
        print(f"[bench] {p.cell.cell_id}: {p.status}{reason} {' '.join(p.methods)}")
    if not args.report_only:
        run_pending(planned, args.out, cpus=args.cpus, deadline=deadline, keep_state=args.keep_state)
    cells = [
        json.loads(cell_file(args.out, p.cell.cell_id).read_text())
        for p in planned
        if cell_file(args.out, p.cell.cell_id).exists()
    ]
    skipped = [
        {"cell_id": p.cell.cell_id, "status": p.status, "reason": p.reason or "not run (deadline or --cells)"}
        for p in planned
        if p.status != "done"
    ]
    env, wall = environment(), time.monotonic() - start
    previous = args.out / "results.json"
    if args.report_only and previous.exists():  # keep the measuring run's wall time and machine state
        old = json.loads(previous.read_text())
        env, wall = old.get("env", env), old.get("wall_seconds", wall)
    written = write_outputs(profile, cells, skipped, args.out, env=env, tune=args.tune, wall_seconds=wall)
    for path in written:
        print(f"written: {path}")
    print(f"[bench] {len(cells)} cell(s) done, {len(skipped)} not; wall {time.monotonic() - start:.0f} s")
    return 0 if all(s["status"] != "failed" for s in skipped) else 1


if __name__ == "__main__":
    raise SystemExit(main())
