"""The experimenter's judge: what a run deleted, how each model scores, and the comparison.

One module for ``simulate`` and ``bench``. The ground truth comes from the deletion
schedule (the experimenter may look at every client's data; the protocol never moves it):
each entry's ids on its client's data as the client holds it (corrupted records included).
Every model is scored with the same definitions (FA, RA, TA, MIA, KL to RT, backdoor ASR);
the deletion's own forget metric is fixed by the scenario before any result is seen: ASR
when the deleted records carry a trigger; the MIA score when they are mislabelled (a model
rarely predicts a lone wrong label even when trained on it, so FA barely moves; its lower
loss on those samples is what the membership attack sees); else FA on the deleted samples
with their recorded labels. Each row then carries:

- ``forget_metric``: that metric's name; ``forget_value``: its value;
- ``forget_gap_rt``: |value - RT's value|, in points;
- ``forget_gain_vs_none``: ``none``'s gap minus this row's gap, in points (how much closer
  to RT the method brings the forget metric than doing nothing);
- ``discriminating``: whether ``none`` is more than 1 point from RT on any forget metric
  (FA, ASR when there is a trigger, and the MIA score when its gap also exceeds twice the
  two scores' standard errors: the AUC's sampling noise); a cell that is not supports no claim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.config import FederationConfig
from fedunlearn.criterion import like_deleted
from fedunlearn.data import IndexedDataset
from fedunlearn.data.backdoor import TriggerPattern
from fedunlearn.metrics import BackdoorSpec, accuracy, average_gap, evaluate_unlearning
from fedunlearn.schedule import ScheduledDeletion, parse_schedule
from fedunlearn.site import ClientSite

#: A cell is discriminating when ``none`` is further than this from RT on a forget metric (points).
DISCRIMINATING_POINTS = 1.0
#: The forget metrics a cell may be judged on.
FORGET_METRICS = ("FA", "MIA", "ASR")
#: How close to RT (points) a method must come to "forget", per forget metric. The MIA
#: score is an AUC over about a hundred members: its standard error is about 3 points, so
#: a gap within twice that is indistinguishable from RT.
VERDICT_MAX_GAP = {"FA": 1.5, "ASR": 1.5, "MIA": 6.0}


@dataclass(frozen=True)
class GroundTruth:
    """D_f (all requests), D_r, the test set and each request's D_f, as the schedule defines them."""

    forget: IndexedDataset
    retain: IndexedDataset
    test: IndexedDataset
    per_request: dict[str, IndexedDataset]
    backdoor: BackdoorSpec | None
    forget_metric: str
    kinds: tuple[str, ...] = field(default=())
    nonmembers: IndexedDataset | None = None  # the MIA's non-members, drawn like D_f


def client_site(config: FederationConfig, partition_id: int, state_root: str | Path | None = None) -> ClientSite:
    """The site of one client as its node sees it (same data, same corruption)."""
    root = Path(state_root or config.run.state_root)
    return ClientSite.open(
        config=config, partition_id=partition_id, state_dir=root / f"client-{partition_id}", lineage="judge"
    )


def ground_truth(config: FederationConfig, *, state_root: str | Path | None = None) -> GroundTruth:
    """D_f, D_r and the test set of the run's schedule (``state_root``: where client sites live)."""
    entries = parse_schedule(config.experiment.deletion_schedule, num_clients=config.data.num_clients)
    if not entries:
        raise ValueError("the run has no deletion schedule: nothing to judge")
    forget_parts, retain_parts, per_request = [], [], {}
    test: IndexedDataset | None = None
    trigger_deleted, mislabel_deleted, corrupted = False, False, []
    for pid in range(config.data.num_clients):
        site = client_site(config, pid, state_root)
        test = site.test
        mine = [e for e in entries if e.partition_id == pid]
        ids = [scheduled_ids(site, e) for e in mine]
        for entry, entry_ids in zip(mine, ids, strict=True):
            per_request[entry.request_id] = site.dataset.subset_by_ids(entry_ids)
        excluded = np.unique(np.concatenate(ids)) if ids else np.empty(0, np.int64)
        corrupted.append(site.corrupted)
        corrupted_deleted = bool(np.isin(site.corrupted, excluded).any())
        trigger_deleted |= corrupted_deleted and config.experiment.corrupt_kind == "trigger"
        mislabel_deleted |= corrupted_deleted and config.experiment.corrupt_kind == "mislabel"
        if len(excluded):
            forget_parts.append(site.dataset.subset_by_ids(excluded))
        kept = site.dataset.without_ids(excluded) if len(excluded) else site.dataset
        if len(kept):
            retain_parts.append(kept)
    assert test is not None
    backdoor = _backdoor(config) if trigger_deleted else None
    forget = IndexedDataset.concat(forget_parts)
    nonmembers = like_deleted(test, config=config, deleted=forget.ids(), corrupted=np.concatenate(corrupted))
    return GroundTruth(
        forget,
        IndexedDataset.concat(retain_parts),
        test,
        per_request,
        backdoor,
        "ASR" if backdoor is not None else "MIA" if mislabel_deleted else "FA",
        tuple(sorted({e.kind for e in entries})),
        nonmembers,
    )


def scheduled_ids(site: ClientSite, entry: ScheduledDeletion) -> np.ndarray:
    """The ids a schedule entry deletes on its client (``corrupted``: exactly the corrupted records)."""
    return entry.select_ids(
        site.dataset.ids(), site.dataset.labels.numpy(), seed=site.config.seed, corrupted=site.corrupted
    )


def _backdoor(config: FederationConfig) -> BackdoorSpec:
    experiment = config.experiment
    return BackdoorSpec(target_label=experiment.trigger_target, pattern=TriggerPattern(size=experiment.trigger_size))


def load_model(config: FederationConfig, path: str | Path) -> nn.Module:
    """A model of the run's architecture loaded from a saved state dict."""
    site = client_site(config, 0)
    model = site.build_model()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def accuracy_on(model: nn.Module, data: IndexedDataset) -> float:
    """Accuracy on ``data`` with its recorded labels (FA of one request)."""
    return accuracy(model, data)


def score(model: nn.Module, truth: GroundTruth, *, reference: nn.Module | None, seed: int) -> dict[str, Any]:
    """One row of metrics (fractions in [0, 1]); ``ASR`` is the backdoor's, when there is one."""
    metrics = evaluate_unlearning(
        model,
        forget=truth.forget,
        retain=truth.retain,
        test=truth.test,
        reference_model=reference,
        backdoor=truth.backdoor,
        seed=seed,
        nonmembers=truth.nonmembers,
    ).to_dict()
    metrics["ASR"] = metrics.pop("backdoor_asr")
    return metrics


def compare(rows: Mapping[str, Mapping[str, Any]], *, forget_metric: str) -> dict[str, dict[str, Any]]:
    """Add the gaps to RT, the gain over ``none`` and the discriminating flag to every row.

    ``rows`` maps labels (methods, ``none``, ``finetune``, ``RT``) to ``score`` rows; RT
    is required, ``none`` gives the gains (they are None without it).
    """
    rt = rows["RT"]
    none = rows.get("none")
    discriminating = none is not None and any(_separates(none, rt, k) for k in FORGET_METRICS if _has(none, rt, k))
    none_gap = _gap(none, rt, forget_metric) if none is not None else None
    out: dict[str, dict[str, Any]] = {}
    for label, row in rows.items():
        gap = _gap(row, rt, forget_metric)
        out[label] = {
            **row,
            "method": label,
            "forget_metric": forget_metric,
            "forget_value": row.get(forget_metric),
            "forget_gap_rt": gap,
            "forget_gain_vs_none": None if none_gap is None else none_gap - gap,
            "discriminating": bool(discriminating),
            "avg_gap_rt": average_gap(row, rt),
        }
    return out


def _separates(none: Mapping[str, Any], rt: Mapping[str, Any], key: str) -> bool:
    """Whether ``none`` is further from RT on ``key`` than 1 point (and, for the MIA score, its noise)."""
    gap = _gap(none, rt, key)
    if key == "MIA":
        noise = 200.0 * sum(float(r.get("mia_std_error") or 0.0) for r in (none, rt))
        return gap > max(DISCRIMINATING_POINTS, noise)
    return gap > DISCRIMINATING_POINTS


def _has(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> bool:
    return all(isinstance(x.get(key), (int, float)) and math.isfinite(x[key]) for x in (a, b))


def _gap(row: Mapping[str, Any] | None, rt: Mapping[str, Any], key: str) -> float:
    """|row - RT| on ``key``, in points (nan when either is missing)."""
    if row is None or not _has(row, rt, key):
        return math.nan
    return 100.0 * abs(float(row[key]) - float(rt[key]))


def verdict(gains: Sequence[float], gaps: Sequence[float], *, max_gap: float = VERDICT_MAX_GAP["FA"]) -> str:
    """Over seeds: "forgets" (mean gain > 2 std and mean gap <= ``max_gap`` points), "partly"
    (gain > 2 std, gap larger), or "no better than doing nothing"."""
    values = [g for g in gains if math.isfinite(g)]
    if not values:
        return "n/a"
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    if mean <= 2 * std or mean <= 0:
        return "no better than doing nothing"
    return "forgets" if float(np.mean(gaps)) <= max_gap else "partly"
