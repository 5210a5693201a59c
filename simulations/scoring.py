"""Score a finished comparison: every label's model and RT's, with the same judge, plus costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulations.comparison import RT, TRUNK, Comparison
from simulations.judge import accuracy_on, compare, ground_truth, load_model, score


def score_comparison(comparison: Comparison) -> dict[str, Any]:
    """Rows for ``before`` (the trunk), each label and RT: metrics, gaps, gains and costs."""
    config = comparison.config
    truth = ground_truth(config, state_root=comparison.run_dir(TRUNK) / "state")
    rt_model = load_model(config, comparison.run_dir(RT) / "model.pt")
    trunk = json.loads((comparison.run_dir(TRUNK) / "results.json").read_text(encoding="utf-8"))
    target = trunk["rounds"][-1]["test_accuracy"] if trunk["rounds"] else None
    rows: dict[str, dict[str, Any]] = {}
    for label in (*comparison.labels, RT):
        path = comparison.run_dir(label) / "model.pt"
        if not path.exists():
            continue
        model = rt_model if label == RT else load_model(config, path)
        rows[label] = {
            **score(model, truth, reference=rt_model, seed=config.seed),
            "requests": {rid: accuracy_on(model, data) for rid, data in truth.per_request.items()},
            **run_cost(comparison.run_dir(label), retrain=label == RT, target_accuracy=target),
        }
    compared = compare(rows, forget_metric=truth.forget_metric)
    before_path = comparison.run_dir(TRUNK) / "model.pt"
    before = score(load_model(config, before_path), truth, reference=rt_model, seed=config.seed)
    return {
        "forget_metric": truth.forget_metric,
        "discriminating": next(iter(compared.values()))["discriminating"] if compared else False,
        "num_forget": len(truth.forget),
        "num_retain": len(truth.retain),
        "kinds": list(truth.kinds),
        "before": before,
        "rows": compared,
    }


def run_cost(run_dir: Path, *, retrain: bool, target_accuracy: float | None = None) -> dict[str, Any]:
    """What a run cost, from its results.json: its phases (a label) or its training (RT).

    Fields: wall seconds, messages, bytes (down + up), sequential round trips, client SGD
    steps and examples processed. For RT also its cost per round and, with
    ``target_accuracy`` (the test accuracy before the deletion), the cost up to the first
    round that regains it (``to_target``). A model without the deleted records may never
    reach the old accuracy (a deleted class is not predicted), so the target is the lower
    of the two: the old accuracy, RT's own final one; within ``TARGET_TOLERANCE``.
    """
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    if retrain:
        return _training_cost(results["rounds"], target_accuracy)
    phases = [e for e in results["events"] if e.get("type") == "unlearning"]
    shared = _by_phase(phases)
    stats = [group[0]["stats"] for group in shared]
    metrics = [group[0].get("metrics", {}) for group in shared]
    return {
        "cost_seconds": sum(max(p["seconds"] for p in group) for group in shared),
        "cost_messages": sum(s["messages"] for s in stats),
        "cost_bytes": sum(s.get("bytes_down", 0) + s.get("bytes_up", 0) for s in stats),
        "cost_round_trips": sum(s.get("round_trips", 0) for s in stats),
        "cost_client_steps": sum(m.get("client_steps", 0) for m in metrics),
        "cost_client_examples": sum(m.get("client_examples", 0) for m in metrics),
        "phases": len(phases),
        "phase_count": len(shared),
        "statuses": [p["status"] for p in phases],
        "phase_reasons": [p["reason"] for p in phases if p["status"] != "served"],
        "outer_steps": [m.get("outer_steps") for m in metrics],
        "no_trace": [bool(m.get("no_trace")) for m in metrics],
    }


_ROUND_FIELDS = {
    "cost_seconds": "seconds",
    "cost_messages": "messages",
    "cost_round_trips": "round_trips",
    "cost_client_steps": "client_steps",
    "cost_client_examples": "client_examples",
}


#: How close (accuracy fraction) to the target RT must come to count as having regained it.
TARGET_TOLERANCE = 0.005


def _by_phase(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events grouped by the phase that served them: requests served together share one
    phase's messages, bytes, round trips and client work, which must be counted once.

    A phase is recognised by its ``stats.phase_id``; events written without one (older
    runs) by their round and identical stats.
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for event in events:
        stats = event["stats"]
        key = stats.get("phase_id") or (event.get("round"), json.dumps(stats, sort_keys=True))
        groups.setdefault(key, []).append(event)
    return list(groups.values())


def _training_cost(rounds: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    def total(upto: list[dict[str, Any]]) -> dict[str, float]:
        sums = {name: float(sum(r.get(key, 0) for r in upto)) for name, key in _ROUND_FIELDS.items()}
        sums["cost_bytes"] = float(sum(r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in upto))
        return sums

    cost: dict[str, Any] = {**total(rounds), "rounds": len(rounds)}
    cost["per_round"] = {k: v / max(len(rounds), 1) for k, v in total(rounds).items()}
    final = rounds[-1]["test_accuracy"] if rounds else None
    if target is not None and final is not None:
        target = min(target, final) - TARGET_TOLERANCE
    cost["target_accuracy"] = target
    reached = next(
        (i for i, r in enumerate(rounds) if target is not None and (r["test_accuracy"] or 0) >= target), None
    )
    cost["rounds_to_target"] = None if reached is None else reached + 1
    cost["to_target"] = None if reached is None else total(rounds[: reached + 1])
    return cost
