"""Centralized reproduction of the seed papers' experiments (one trainer, w = 1, no Flower).

Per dataset and model: train the original model (seeded) for E epochs, recording ONE
training run into two update histories at once (keep_ratio 1.0 for conventional amnesiac,
``Profile.keep_ratio`` for partial amnesiac; one history round per epoch) while logging
FA/RA curves; then, per scenario (forget a class / a random 10%), apply every method to a
copy of the trained model and evaluate it against RT (``evaluate_unlearning`` with RT as
reference). A sweep of forget-set sizes gives efficacy vs % affected batches (Figure 4);
``python -m simulations.paper fig4`` places deletions on exactly p% of the batches instead,
and ``simulations.paper`` reproduces the seed paper's figures one command each.

    python -m simulations.centralized --profile quick --out results/central_quick

Writes OUT/results.json (atomically, after every row, so a killed run keeps what it
finished), OUT/table.md and OUT/fig_*.png (see simulations/plots.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import fedunlearn.unlearning  # noqa: F401  (registers the methods)
from fedunlearn.atomic import write_json_atomic
from fedunlearn.data import DatasetBundle, load_dataset
from fedunlearn.errors import DataNotFoundError, FedUnlearnError
from fedunlearn.metrics import UnlearningMetrics, accuracy, evaluate_unlearning
from fedunlearn.unlearning.base import ForgetRetainSplit
from simulations import plots
from simulations.centralized_profiles import (
    PROFILES,
    SCENARIOS,
    DatasetSpec,
    MethodSpec,
    Profile,
    get_profile,
    restrict,
    sweep_forget_sets,
)
from simulations.centralized_training import Cell, apply_method, capped, check_methods, train_original

logger = logging.getLogger("simulations.centralized")


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _row(
    cell: Cell,
    scenario: str,
    label: str,
    keep: float,
    metrics: UnlearningMetrics,
    rt: UnlearningMetrics | None,
    seconds: float,
    split: ForgetRetainSplit,
) -> dict[str, Any]:
    m = metrics.to_dict()
    gap = metrics.average_gap_to(rt) if rt is not None else 0.0
    return {
        "dataset": cell.spec.name,
        "model": cell.model_name,
        "scenario": scenario,
        "method": label,
        "keep_ratio": keep,
        **{k: _clean(m[k]) for k in ("FA", "RA", "TA", "MIA")},
        "avg_gap_rt": _clean(gap),
        "kl_rt_forget": _clean(m["kl_rt_forget"]),
        "seconds": seconds,
        "kl_rt_test": _clean(m["kl_rt_test"]),
        "mia_svc": _clean(m.get("mia_svc")),
        "forget_size": len(split.forget),
        "retain_size": len(split.retain),
    }


class Results:
    """results.json, rewritten atomically after every change."""

    def __init__(self, path: Path, profile: Profile, seed: int) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "profile": profile.name,
            "seed": seed,
            "status": "running",
            "config": profile.to_dict(),
            "env": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_average_start": os.getloadavg(),
            },
            "runs": [],
            "curves": [],
            "affected_batches": [],
            "history": [],
            "skipped": [],
            "failed": [],
        }

    def add(self, key: str, item: dict[str, Any]) -> None:
        """Append ``item`` to the list ``key`` and save."""
        self.data[key].append(item)
        self.save()

    def save(self) -> None:
        """Rewrite results.json atomically."""
        write_json_atomic(self.path, self.data)


def run_scenario(cell: Cell, profile: Profile, scenario: str, ids: np.ndarray, results: Results, *, seed: int) -> None:
    """Every method of the profile on one forget set, RT first (the reference of all rows)."""
    split = ForgetRetainSplit(cell.train.subset_by_ids(ids), cell.train.without_ids(ids))
    evaluate = functools.partial(
        evaluate_unlearning,
        forget=split.forget,
        retain=split.retain,
        test=cell.test,
        seed=seed,
        max_shadow=profile.max_shadow,
        max_retain_eval=profile.max_retain_eval,
    )
    rt_spec = profile.method("RT")
    assert rt_spec is not None
    rt_model, rt_seconds, _ = apply_method(cell, rt_spec, profile, split, scenario=scenario, seed=seed)
    rt = evaluate(rt_model, reference_model=rt_model)
    results.add("runs", _row(cell, scenario, "RT", 1.0, rt, None, rt_seconds, split))
    original = evaluate(cell.model, reference_model=rt_model)
    results.add("runs", _row(cell, scenario, "original", 1.0, original, rt, 0.0, split))
    bar = tqdm([m for m in profile.methods if m.label != "RT"], desc=f"{cell.spec.name}/{cell.model_name}/{scenario}")
    for spec in bar:
        bar.set_postfix_str(spec.label)
        try:
            model, seconds, keep = apply_method(cell, spec, profile, split, scenario=scenario, seed=seed)
        except FedUnlearnError as err:
            logger.error("%s failed on %s/%s/%s: %s", spec.label, cell.spec.name, cell.model_name, scenario, err)
            results.add(
                "failed",
                {
                    "dataset": cell.spec.name,
                    "model": cell.model_name,
                    "scenario": scenario,
                    "method": spec.label,
                    "error": f"{type(err).__name__}: {err}",
                },
            )
            continue
        metrics = evaluate(model, reference_model=rt_model)
        results.add("runs", _row(cell, scenario, spec.label, keep, metrics, rt, seconds, split))
        tqdm.write(
            f"  {cell.spec.name}/{cell.model_name}/{scenario:8s} {spec.label:24s} FA {metrics.FA:.3f} "
            f"RA {metrics.RA:.3f} TA {metrics.TA:.3f} MIA {metrics.MIA:.3f} ({seconds:.1f}s)"
        )


def run_sweep(cell: Cell, profile: Profile, class_ids: np.ndarray, results: Results, *, seed: int) -> None:
    """Figure 4: conventional vs partial amnesiac on growing subsets of the forget class."""
    full = cell.histories[1.0]
    total = sum(r.steps for r in full.usage().rounds)
    per_epoch = cell.train.num_batches(profile.batch_size)
    sweeps = sweep_forget_sets(class_ids, steps_per_epoch=per_epoch, fractions=profile.sweep_batch_fractions, seed=seed)
    methods: dict[str, MethodSpec | None] = {"original": None}
    for ratio in profile.history_ratios():
        name = "amnesiac" if ratio == 1.0 else "partial_amnesiac"
        label = name if ratio in (1.0, profile.keep_ratio) else f"{name}@{ratio:g}"
        methods[label] = MethodSpec(label, name, history="full" if ratio == 1.0 else "partial", history_keep=ratio)
    for target, ids in tqdm(sweeps, desc=f"sweep {cell.spec.name}/{cell.model_name}", leave=False):
        affected = len(full.affected_steps(ids)) / total
        split = ForgetRetainSplit(cell.train.subset_by_ids(ids), cell.train.without_ids(ids))
        retain = capped(split.retain, profile.max_retain_eval, seed, 5)
        for label, spec in methods.items():
            model, seconds = cell.model, 0.0
            if spec is not None:
                model, seconds, _ = apply_method(cell, spec, profile, split, scenario="sweep", seed=seed)
            point = {"target_fraction": target, "affected_fraction": affected, "forget_size": len(ids)}
            accuracies = {k: accuracy(model, d) for k, d in (("FA", split.forget), ("RA", retain), ("TA", cell.test))}
            results.add(
                "affected_batches",
                {
                    "dataset": cell.spec.name,
                    "model": cell.model_name,
                    "method": label,
                    **point,
                    **accuracies,
                    "seconds": seconds,
                },
            )


def run(
    profile: Profile, *, out: Path, data_root: str | None = None, seed: int = 0, figures: bool = True
) -> dict[str, Any]:
    """Run ``profile`` and write results.json and (``figures``) table.md and the PNGs into ``out``."""
    check_methods(m.method for m in profile.methods)  # unknown names fail before any training
    out.mkdir(parents=True, exist_ok=True)
    results, start = Results(out / "results.json", profile, seed), time.perf_counter()
    for spec in profile.datasets:
        try:
            bundle = load_dataset(spec.name, root=data_root)
        except DataNotFoundError as err:
            logger.warning("SKIP dataset %s: %s", spec.name, err)
            results.add("skipped", {"dataset": spec.name, "models": list(spec.models), "reason": str(err)})
            continue
        for name in spec.models:
            _run_model(profile, spec, bundle, name, results, seed=seed)
            if figures and (spec, name) != (profile.datasets[-1], profile.datasets[-1].models[-1]):
                plots.write_all(results.data, out)  # figures so far, in case the run is stopped
    results.data["env"]["load_average_end"] = os.getloadavg()
    results.data.update(status="complete", wall_seconds=time.perf_counter() - start)
    results.save()
    if figures:
        plots.write_all(results.data, out)
    return results.data


def _run_model(
    profile: Profile, spec: DatasetSpec, bundle: DatasetBundle, name: str, results: Results, *, seed: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="fedunlearn-central-") as tmp:
        train = capped(bundle.train, spec.train_samples, seed, 1)
        forget = {s: SCENARIOS[s](train, spec, profile, seed) for s in profile.scenarios}
        cell, curves, seconds = train_original(profile, spec, bundle, name, seed=seed, tmp=Path(tmp), forget=forget)
        usage = {f"keep_{ratio:g}": store.usage() for ratio, store in cell.histories.items()}
        stored = {k: {"disk_bytes": u.disk_bytes, "dense_bytes": u.dense_bytes} for k, u in usage.items()}
        steps = sum(r.steps for r in cell.histories[1.0].usage().rounds)
        results.add(
            "history", {"dataset": spec.name, "model": name, "train_seconds": seconds, "steps": steps, **stored}
        )
        tqdm.write(f"{spec.name}/{name}: {profile.epochs} epochs on {len(cell.train)} samples in {seconds:.1f}s")
        for scenario, ids in forget.items():
            results.data["curves"].append(
                {"dataset": spec.name, "model": name, "scenario": scenario, **curves[scenario]}
            )
            run_scenario(cell, profile, scenario, ids, results, seed=seed)
        if profile.sweep_models is None or name in profile.sweep_models:
            run_sweep(cell, profile, SCENARIOS["class"](cell.train, spec, profile, seed), results, seed=seed)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="experiment profile (quick)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for results.json, table.md, fig_*.png")
    parser.add_argument("--datasets", nargs="+", help="only these of the profile's datasets")
    parser.add_argument("--models", nargs="+", help="these models instead of the profile's (every dataset)")
    parser.add_argument("--methods", nargs="+", help="only these method labels (RT is always run)")
    parser.add_argument("--data-root", default=None, help="data folder (default: $FEDUNLEARN_DATA)")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, forget sets, init, shuffling (0)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    profile = restrict(get_profile(args.profile), datasets=args.datasets, models=args.models, methods=args.methods)
    data = run(profile, out=args.out, data_root=args.data_root, seed=args.seed)
    print(
        f"done in {data['wall_seconds']:.0f}s: {len(data['runs'])} rows, {len(data['skipped'])} skipped, "
        f"{len(data['failed'])} failed -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
