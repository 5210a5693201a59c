"""One benchmark cell: a Flower simulation that trains once, serves the scheduled deletions
with every method from the same snapshot, retrains (RT), and then the per-method metrics.

``run_cell(config, methods=[...], cpus=2)`` returns one row per method (and RT) with
FA/RA/TA/MIA, KL and Avg.D to RT, backdoor ASR, unlearning time and messages vs RT's, and
history bytes vs dense bytes. The rows are what ``simulations.bench`` tabulates and plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.data.backdoor import TriggerPattern
from fedunlearn.metrics import BackdoorSpec, accuracy, average_gap, evaluate_unlearning
from fedunlearn.schedule import parse_schedule
from simulations.compare import client_site, load_model

Progress = Callable[[str], None]


def scheduled_truth(config: FederationConfig) -> tuple[IndexedDataset, IndexedDataset, IndexedDataset, dict[str, IndexedDataset]]:
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
        excluded = sorted({int(i) for part in ids for i in part})
        if excluded:
            forget_parts.append(site.dataset.subset_by_ids(excluded))
        kept = site.dataset.without_ids(excluded) if excluded else site.dataset
        if len(kept):
            retain_parts.append(kept)
    assert test is not None and forget_parts, "the schedule deletes nothing"
    return IndexedDataset.concat(forget_parts), IndexedDataset.concat(retain_parts), test, per_request


def run_cell(config: FederationConfig, *, methods: Sequence[str], cpus: int = 2, progress: Progress | None = None) -> dict[str, Any]:
    """Run the cell's simulation into ``config.out_dir`` and evaluate every method against RT."""
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from server.bench_app import make_bench_server_app

    out = Path(config.out_dir or "bench-cell")
    server_app = make_bench_server_app(overrides=config.to_run_config(), methods=methods, progress=progress)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": cpus}}
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=config.data.num_clients,
                   backend_config=backend)  # type: ignore[arg-type]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return evaluate_cell(config, results, methods)


def evaluate_cell(config: FederationConfig, results: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """Metrics of before / each method / RT on the same D_f, D_r and test set."""
    out = Path(config.out_dir or "bench-cell")
    forget, retain, test, per_request = scheduled_truth(config)
    rt_model = load_model(config, out / "models" / "RT.pt")
    backdoor = None
    if config.backdoor.client is not None:
        backdoor = BackdoorSpec(target_label=config.backdoor.target, pattern=TriggerPattern(size=config.backdoor.trigger_size))
    events = results["events"]
    retrain = next(e for e in events if e["type"] == "retrain")
    usage = _history_usage(results)
    rows = []
    for name in ["before", *methods, "RT"]:
        model = rt_model if name == "RT" else load_model(config, out / "models" / f"{name}.pt")
        metrics = evaluate_unlearning(model, forget=forget, retain=retain, test=test, reference_model=rt_model,
                                      backdoor=backdoor, seed=config.seed).to_dict()
        row = {"method": name, **metrics, "requests": {rid: accuracy(model, d) for rid, d in per_request.items()},
               **_cost(name, events, retrain), **usage}
        rows.append(row)
    reference = next(r for r in rows if r["method"] == "RT")
    for row in rows:
        row["avg_gap_rt"] = average_gap(row, reference)
    return {"config": config.to_run_config(), "rows": rows, "num_forget": len(forget), "num_retain": len(retain)}


def _cost(name: str, events: list[dict[str, Any]], retrain: dict[str, Any]) -> dict[str, Any]:
    phases = [e for e in events if e.get("type") == "unlearning"]
    methods = [e for e in events if e.get("type") == "method"]
    if name == "RT":
        return {"unlearn_seconds": retrain["seconds"], "messages": retrain["messages"], "retrain_seconds": retrain["seconds"]}
    if name == "before":
        return {"unlearn_seconds": 0.0, "messages": 0, "retrain_seconds": retrain["seconds"]}
    # Phases are logged in method order; pick this method's block by the method events' order.
    index = [m["method"] for m in methods].index(name)
    counts = [len(m["outcomes"]) for m in methods]
    mine = phases[sum(counts[:index]): sum(counts[: index + 1])]
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
    return {"history_bytes_per_client_round": written / max(len(rows), 1), "history_bytes": disk, "dense_history_bytes": dense}
