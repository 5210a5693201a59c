"""Figure 4 run federated: efficacy against the share of the client's recorded steps a deletion touches.

Per model, five Flower clients train once (``simulations.paper.federation``; client 1 holds
every sample of the forgotten class). A federated client reshuffles its batches every
round, so a deletion cannot be placed on a fixed p% of batches as the centralized figure
does. Instead the samples are chosen from what the client recorded: forgotten-class
samples are added in a seeded random order, each adding the stored steps (one per round)
whose batch held it, until at least p% of the client's recorded steps hold a deleted sample
(p = 100%: the whole class). The share reached is measured on the history and is what the
plot shows. For each p: FA on the deleted samples, RA on every retained sample, TA, after
the client's conventional and partial amnesiac corrections (no slow steps), next to the
model before unlearning; RT (the federation retrained with Flower without the class) is
recorded at 100%, the only point whose retraining the federation already ran.

    python -m simulations.paper fig4 --federated --out results/paper/fig4

Writes OUT/fig4-federated.json and OUT/fig4-federated.png.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fedunlearn.data import IndexedDataset
from fedunlearn.history.results import StepRef
from fedunlearn.site_unlearning import forget_split
from simulations.centralized_profiles import Profile
from simulations.centralized_training import capped, with_delta
from simulations.paper.curves import Probe
from simulations.paper.federated import client_change, federation_facts
from simulations.paper.federation import Federation, train_federation
from simulations.paper.plotting import plot_affected
from simulations.paper.results import FigureResults
from simulations.paper.settings import PaperSetup

FIGURE = "fig4-federated"
_METHODS = ("amnesiac", "partial_amnesiac")


def place_on_steps(
    steps: Sequence[StepRef], candidates: np.ndarray, *, fraction: float, total: int, seed: int
) -> tuple[np.ndarray, float]:
    """Candidates in a seeded order until at least ``fraction`` of ``total`` steps hold one; (ids, share).

    ``fraction`` 1 takes every candidate (the whole class, as RT deleted it), not only as many
    as it takes to touch every step."""
    held: dict[int, set[tuple[int, int]]] = {}
    wanted = set(candidates.tolist())
    for ref in steps:
        for sample in set(ref.sample_ids.tolist()) & wanted:
            held.setdefault(sample, set()).add((ref.round, ref.step))
    order = np.random.default_rng([seed, 40]).permutation(np.asarray(sorted(held), dtype=np.int64))
    chosen: list[int] = []
    touched: set[tuple[int, int]] = set()
    for sample in order:
        if fraction < 1.0 and len(touched) >= fraction * total and chosen:
            break
        chosen.append(int(sample))
        touched |= held[int(sample)]
    return np.asarray(sorted(chosen), dtype=np.int64), len(touched) / total


def compute_point(
    fed: Federation, setup: PaperSetup, profile: Profile, fraction: float, steps: Sequence[StepRef]
) -> dict[str, Any]:
    """One model at one share of affected steps: the methods' FA/RA/TA and the original's."""
    whole_class = fed.split.forget
    ids, share = place_on_steps(steps, whole_class.ids(), fraction=fraction, total=fed.recorded_steps, seed=setup.seed)
    point = dataclasses.replace(fed, split=forget_split(fed.site, ids))
    kept_of_class = whole_class.without_ids(ids)
    retain = IndexedDataset.concat([fed.truth.retain, kept_of_class]) if len(kept_of_class) else fed.truth.retain
    cap, seed = setup.eval_samples, setup.seed
    probe = Probe(
        capped(point.split.forget, cap, seed, 11), capped(retain, cap, seed, 12), capped(fed.truth.test, cap, seed, 13)
    )
    methods = {label: probe.measure(with_delta(fed.model, client_change(point, profile, label))) for label in _METHODS}
    return {
        "model": fed.site.config.train.model,
        "target_fraction": fraction,
        "affected_fraction": share,
        "measured_affected_fraction": share,
        "forget_size": len(ids),
        "original": probe.measure(fed.model),
        "methods": methods,
        **({"RT": probe.measure(fed.rt)} if fraction >= 1.0 else {}),
    }


def run_federated(
    setup: PaperSetup, fractions: Sequence[float], *, out: Path, data_root: str | None, fresh: bool
) -> dict[str, Any]:
    """Every (model, fraction) point not finished yet, one federation per model."""
    profile = setup.profile(_METHODS)
    results = FigureResults(out, FIGURE, settings={**setup.to_dict(), "fractions": list(fractions)}, fresh=fresh)
    results.note(requested=setup.dataset, used=setup.dataset)
    for name in tqdm(setup.models, desc=FIGURE):
        missing = [f for f in fractions if not results.done(f"{name}/{f:g}")]
        if not missing:
            continue
        with tempfile.TemporaryDirectory(prefix=f"fedunlearn-{FIGURE}-") as tmp:
            start = time.perf_counter()
            fed = train_federation(setup, name, workdir=Path(tmp), data_root=data_root)
            facts = federation_facts(fed, time.perf_counter() - start)
            store = fed.history("amnesiac")
            assert store is not None  # the federation records the dense history
            steps = store.affected_steps(fed.split.forget.ids())
            for fraction in tqdm(missing, desc=f"{FIGURE} {name}", leave=False):
                point = compute_point(fed, setup, profile, fraction, steps)
                results.put(f"{name}/{fraction:g}", {**point, "federation": facts})
        plot_affected(results.data, out / f"{FIGURE}.png")
    data = results.finish()
    plot_affected(data, out / f"{FIGURE}.png")
    return data


def main_federated(setup: PaperSetup, fractions: Sequence[float], args: Any) -> int:
    """``fedunlearn paper fig4 --federated``."""
    if setup.delete != "class":
        raise SystemExit("--federated deletes samples of the class its client holds; it takes no --delete sample")
    data = run_federated(setup, fractions, out=args.out, data_root=args.data_root, fresh=args.fresh)
    print(f"{FIGURE}: {len(data['cells'])} point(s) in {data['wall_seconds']:.0f}s -> {args.out}")
    return 0
