"""Benchmark cells: Flower simulations that train once, serve the scheduled deletions with
every method from the same snapshot, retrain (RT), and then the per-method metrics.

``run_cell(config, methods=[...], cpus=2)`` returns one row per method (and RT) with
FA/RA/TA/MIA, KL and Avg.D to RT, backdoor ASR, unlearning time and messages vs RT's, and
history bytes vs dense bytes, plus the FA/RA curves of the training rounds (global model
and RT) and each forgetting client's share of stored steps that held a forgotten sample.
``run_cells`` serves several cells in ONE simulation (the SuperNodes start once), calling
back after each. The rows are what ``simulations.bench`` tabulates and plots.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.data.backdoor import TriggerPattern
from fedunlearn.history import HistoryStore
from fedunlearn.metrics import BackdoorSpec, accuracy, average_gap, evaluate_unlearning
from fedunlearn.schedule import parse_schedule
from simulations.compare import client_site, load_model

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]
#: ``on_result(index, result, error)`` after each cell of ``run_cells``.
CellResult = Callable[[int, dict[str, Any] | None, BaseException | None], None]
#: RA along the training curves is measured on at most this many retained samples.
CURVE_MAX_RETAIN = 2000


def scheduled_truth(
    config: FederationConfig,
) -> tuple[IndexedDataset, IndexedDataset, IndexedDataset, dict[str, IndexedDataset]]:
    """D_f, D_r, test set and per-request D_f, from the deletion schedule (as RT sees it)."""
    entries = parse_schedule(config.deletion_schedule, num_clients=config.data.num_clients)
    forget_parts, retain_parts, per_request = [], [], {}
    test: IndexedDataset | None = None
    for pid in range(config.data.num_clients):
        site = client_site(config, pid)
        test = site.test
        mine = [e for e in entries if e.partition_id == pid]
        ids = [site.scheduled_ids(e) for e in mine]
        for entry, entry_ids in zip(mine, ids, strict=True):
            per_request[entry.request_id] = site.dataset.subset_by_ids(entry_ids)
        excluded = (
            np.unique(np.concatenate([np.asarray(part, dtype=np.int64) for part in ids]))
            if ids
            else np.empty(0, np.int64)
        )
        if len(excluded):
            forget_parts.append(site.dataset.subset_by_ids(excluded))
        kept = site.dataset.without_ids(excluded) if len(excluded) else site.dataset
        if len(kept):
            retain_parts.append(kept)
    assert test is not None and forget_parts, "the schedule deletes nothing"
    return IndexedDataset.concat(forget_parts), IndexedDataset.concat(retain_parts), test, per_request


def run_cell(
    config: FederationConfig,
    *,
    methods: Sequence[str],
    cpus: int = 2,
    progress: Progress | None = None,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one cell's simulation into ``config.out_dir`` and evaluate every method against RT."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def keep(index: int, result: dict[str, Any] | None, error: BaseException | None) -> None:
        results.extend([result] if result is not None else [])
        errors.extend([error] if error is not None else [])

    run_cells([(config, methods, method_overrides or {})], cpus=cpus, progress=progress, on_result=keep)
    if errors or not results:
        raise RuntimeError(f"benchmark cell in {config.out_dir} failed: {errors[0] if errors else 'no result'}")
    return results[0]


def run_cells(
    cells: Sequence[tuple[FederationConfig, Sequence[str], Mapping[str, Mapping[str, Any]]]],
    *,
    cpus: int = 2,
    progress: Progress | None = None,
    on_result: CellResult | None = None,
    keep_going: Callable[[], bool] | None = None,
) -> None:
    """Run ``(config, method labels, method overrides)`` cells in one simulation, in order.

    Every config needs the same ``num_clients`` (one SuperNode per client) and its own
    ``out_dir`` and ``state_root``. ``on_result(index, result, error)`` is called after each
    cell, with ``evaluate_cell``'s result or the error that stopped the cell;
    ``keep_going()`` is asked before each cell (False: stop, e.g. a time budget is spent).
    """
    from flwr.simulation import run_simulation

    from clients.client_app import build_client_app
    from server.bench_app import CellPlan, make_bench_server_app

    sizes = {config.data.num_clients for config, _, _ in cells}
    if len(sizes) != 1:
        raise ValueError(f"cells of one simulation need the same num_clients, got {sorted(sizes)}; group them")

    def done(index: int, error: BaseException | None) -> None:
        config, methods, _ = cells[index]
        result = None
        if error is None:
            try:
                results = json.loads(
                    (Path(config.out_dir or "bench-cell") / "results.json").read_text(encoding="utf-8")
                )
                result = evaluate_cell(config, results, methods)
            except Exception as err:  # noqa: BLE001 (reported to the caller; later cells still run)
                logger.error("evaluating cell %s failed: %s\n%s", config.out_dir, err, traceback.format_exc(limit=5))
                error = err
        if on_result is not None:
            on_result(index, result, error)

    plans = [CellPlan(config.to_run_config(), list(methods), dict(overrides)) for config, methods, overrides in cells]
    server_app = make_bench_server_app(cells=plans, progress=progress, on_cell=done, keep_going=keep_going)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": cpus}}
    client_app = build_client_app(benchmark=True)  # snapshot/restore: benchmarks only
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=sizes.pop(),
        backend_config=backend,  # type: ignore[arg-type]
    )


def evaluate_cell(config: FederationConfig, results: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """Metrics of before / each method / RT on the same D_f, D_r and test set."""
    out = Path(config.out_dir or "bench-cell")
    forget, retain, test, per_request = scheduled_truth(config)
    rt_model = load_model(config, out / "models" / "RT.pt")
    backdoor = None
    if config.backdoor.client is not None:
        backdoor = BackdoorSpec(
            target_label=config.backdoor.target, pattern=TriggerPattern(size=config.backdoor.trigger_size)
        )
    events = results["events"]
    retrain = next(e for e in events if e["type"] == "retrain")
    usage = _history_usage(results)
    rows = []
    for name in ["before", *methods, "RT"]:
        model = rt_model if name == "RT" else load_model(config, out / "models" / f"{name}.pt")
        metrics = evaluate_unlearning(
            model,
            forget=forget,
            retain=retain,
            test=test,
            reference_model=rt_model,
            backdoor=backdoor,
            seed=config.seed,
        ).to_dict()
        row = {
            "method": name,
            **metrics,
            "requests": {rid: accuracy(model, d) for rid, d in per_request.items()},
            **_cost(name, events, retrain),
            **usage,
        }
        rows.append(row)
    reference = next(r for r in rows if r["method"] == "RT")
    for row in rows:
        row["avg_gap_rt"] = average_gap(row, reference)
    log_bytes = [e["total_bytes"] for e in events if e.get("type") == "federaser-log"]
    return {
        "config": config.to_run_config(),
        "rows": rows,
        "num_forget": len(forget),
        "num_retain": len(retain),
        "curves": training_curves(config, forget, retain),
        "affected": affected_steps(config),
        "server_log_bytes": max(log_bytes, default=0),
        "train_rounds": [
            {k: r[k] for k in ("round", "test_accuracy", "seconds", "messages")} for r in results["rounds"]
        ],
    }


def training_curves(config: FederationConfig, forget: IndexedDataset, retain: IndexedDataset) -> dict[str, Any]:
    """FA and RA of the global model after each training round, and of RT's (round 0: initial)."""
    out = Path(config.out_dir or "bench-cell") / "models"
    if len(retain) > CURVE_MAX_RETAIN:
        rng = np.random.default_rng([config.seed, 2])
        retain = retain.select(np.sort(rng.choice(len(retain), CURVE_MAX_RETAIN, replace=False)))
    curves: dict[str, Any] = {"round": list(range(config.num_rounds + 1))}
    for name, pattern in (("train", "round-{:03d}.pt"), ("RT", "RT-round-{:03d}.pt")):
        paths = [out / ("round-000.pt" if r == 0 else pattern.format(r)) for r in curves["round"]]
        models = [load_model(config, p) if p.exists() else None for p in paths]
        curves[f"{name}_FA"] = [accuracy(m, forget) if m is not None else None for m in models]
        curves[f"{name}_RA"] = [accuracy(m, retain) if m is not None else None for m in models]
    return curves


def affected_steps(config: FederationConfig) -> dict[str, dict[str, int]]:
    """Per forgetting client: stored steps of its (pruned) history holding a forgotten sample.

    Read from the client's history as the snapshot left it (before any request was served);
    ``{"client-k": {"affected": a, "steps": n}}``.
    """
    report: dict[str, dict[str, int]] = {}
    for pid in sorted(
        {e.partition_id for e in parse_schedule(config.deletion_schedule, num_clients=config.data.num_clients)}
    ):
        site = client_site(config, pid)
        ids = np.unique(np.concatenate([site.scheduled_ids(e) for e in site.schedule()]))
        dirs = [
            d for d in sorted((site.state_dir / "history").glob("*")) if d.is_dir() and not d.name.endswith("-full")
        ]
        if not dirs:
            continue
        store = HistoryStore.for_model(dirs[-1], model=site.build_model(), config=config.history)
        steps = sum(r.steps for r in store.usage().rounds)
        report[f"client-{pid}"] = {"affected": len(store.affected_steps(ids)), "steps": steps}
    return report


def _cost(name: str, events: list[dict[str, Any]], retrain: dict[str, Any]) -> dict[str, Any]:
    phases = [e for e in events if e.get("type") == "unlearning"]
    methods = [e for e in events if e.get("type") == "method"]
    if name == "RT":
        return {
            "unlearn_seconds": retrain["seconds"],
            "messages": retrain["messages"],
            "retrain_seconds": retrain["seconds"],
        }
    if name == "before":
        return {"unlearn_seconds": 0.0, "messages": 0, "retrain_seconds": retrain["seconds"]}
    # Phases are logged in method order; pick this method's block by the method events' order.
    index = [m["method"] for m in methods].index(name)
    counts = [len(m["outcomes"]) for m in methods]
    mine = phases[sum(counts[:index]) : sum(counts[: index + 1])]
    return {
        "unlearn_seconds": sum(p["seconds"] for p in mine),
        "messages": sum(p["stats"]["messages"] for p in mine),
        "retrain_seconds": retrain["seconds"],
        "served": sum(p["status"] == "served" for p in mine),
        "phases": len(mine),
        "deferred_reasons": [p["reason"] for p in mine if p["status"] != "served"],
    }


def _history_usage(results: dict[str, Any]) -> dict[str, Any]:
    """History bytes per client per round vs dense (from the training rounds)."""
    rows = [c for r in results["rounds"] for c in r["clients"]]
    written = sum(c["history_round_bytes"] for c in rows)
    last = {c["partition_id"]: c for r in results["rounds"] for c in r["clients"]}
    dense = sum(c["history_dense_bytes"] for c in last.values())
    disk = sum(c["history_bytes"] for c in last.values())
    return {
        "history_bytes_per_client_round": written / max(len(rows), 1),
        "history_bytes": disk,
        "dense_history_bytes": dense,
    }
