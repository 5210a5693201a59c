"""Judge an unlearned federation against its retrain baseline (RT), as the experimenter.

In a simulation the experimenter may look at every client's state directory to rebuild the
forget set D_f (the ids each served request forgot) and the retained set D_r: the protocol
itself never moves them. Metrics follow DESIGN.md / ALGORITHMS.md: FA, RA, TA, MIA-efficacy,
KL(p_RT || p) on D_f and on the test set, Avg.D over FA/RA/TA/MIA, backdoor ASR.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.data.backdoor import TriggerPattern
from fedunlearn.metrics import BackdoorSpec, accuracy, average_gap, evaluate_unlearning
from fedunlearn.site import ClientSite


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """D_f (per forgetting client and in total), D_r and the test set of a finished run."""

    forget: IndexedDataset
    retain: IndexedDataset
    test: IndexedDataset
    forget_by_client: dict[int, int]
    forget_by_request: dict[str, IndexedDataset]


def client_site(config: FederationConfig, partition_id: int) -> ClientSite:
    """The site of one client as its node saw it (same data, same poisoning)."""
    state_dir = Path(config.state_root) / f"client-{partition_id}"
    return ClientSite.open(config=config, partition_id=partition_id, state_dir=state_dir, lineage="evaluation")


def ground_truth(config: FederationConfig) -> GroundTruth:
    """Rebuild D_f from the served requests' ``*.forgotten.npy`` files and D_r from the rest."""
    forget_parts, retain_parts, counts, by_request = [], [], {}, {}
    test: IndexedDataset | None = None
    for pid in range(config.data.num_clients):
        site = client_site(config, pid)
        test = site.test
        forgotten = site.forgotten_ids()
        if len(forgotten):
            forget_parts.append(site.dataset.subset_by_ids(forgotten))
            counts[pid] = int(len(forgotten))
        for path in sorted(site.queue.dir.glob("*.forgotten.npy")):
            by_request[path.name.removesuffix(".forgotten.npy")] = site.dataset.subset_by_ids(np.load(path))
        retain_parts.append(site.dataset.without_ids(forgotten))
    if not forget_parts:
        raise RuntimeError(f"no served deletion request under {config.state_root}: nothing to compare")
    assert test is not None
    retain = IndexedDataset.concat([p for p in retain_parts if len(p)])
    return GroundTruth(IndexedDataset.concat(forget_parts), retain, test, counts, by_request)


def load_model(config: FederationConfig, path: Path) -> nn.Module:
    """A model of the run's architecture loaded from a saved state dict."""
    site = client_site(config, 0)
    model = site.build_model()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def compare_to_retrain(
    config: FederationConfig, *, unlearned: Path, retrained: Path, before: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Metrics of the unlearned, RT (and pre-unlearning) models, and the unlearned model's gaps to RT."""
    truth = ground_truth(config)
    rt_model = load_model(config, retrained)
    backdoor = None
    if config.backdoor.client is not None:
        backdoor = BackdoorSpec(
            target_label=config.backdoor.target, pattern=TriggerPattern(size=config.backdoor.trigger_size)
        )
    rows: dict[str, Any] = {}
    per_request: dict[str, dict[str, Any]] = {rid: {} for rid in truth.forget_by_request}
    for name, path in (("unlearned", unlearned), ("RT", retrained), ("before", before)):
        if path is None:
            continue
        model = rt_model if name == "RT" else load_model(config, path)
        metrics = evaluate_unlearning(
            model,
            forget=truth.forget,
            retain=truth.retain,
            test=truth.test,
            reference_model=rt_model,
            backdoor=backdoor,
            seed=seed,
        )
        rows[name] = metrics.to_dict()
        for rid, forget in truth.forget_by_request.items():
            per_request[rid][name] = {"FA": accuracy(model, forget), "num_forget": len(forget)}
    rows["requests"] = per_request
    rows["avg_gap_rt"] = average_gap(rows["unlearned"], rows["RT"])
    if "before" in rows:
        rows["avg_gap_rt_before"] = average_gap(rows["before"], rows["RT"])
    rows["num_forget"] = len(truth.forget)
    rows["num_retain"] = len(truth.retain)
    rows["forget_by_client"] = truth.forget_by_client
    return rows
