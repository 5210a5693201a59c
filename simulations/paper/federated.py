"""Figures 1-3 run federated: the same cells, computed from a Flower federation (``--federated``).

Each model is trained by five Flower clients (``simulations.paper.federation``); client 1
holds every sample of the forgotten class and deletes it. The curves are the global model
after the client's change at each budget, as the server's fast step applies it:

- history methods (amnesiac, partial amnesiac): the client's FedAvg-weighted stored steps
  are subtracted round by round, oldest first (clients reshuffle their batches every round,
  so the centralized figure's batch blocks do not exist here); the last point is the
  method's whole correction, and ``endpoint_gap`` is the largest difference between that
  point and what the method itself returns (0 up to float error);
- step methods (label-flip, gradient ascent, their partial versions): the client's method
  with a budget of k SGD steps, as in the centralized figure.

Every method runs with the centralized figure's hyper-parameters (the rows of
``PaperSetup.profile``), so the two figures differ only in how the model was trained and
whose steps are undone. The references are the global model before unlearning, RT (the
federation retrained with Flower without the class) and conventional amnesiac followed by
the client's fine-tuning on what it keeps. FA is measured on the deleted records, RA on every
client's retained records, TA on the test set. A verified phase with its slow,
remain-preserving steps is ``fedunlearn bench --profile paper``; these curves show the
unlearning steps alone, as the paper's do.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedunlearn.data import DatasetBundle
from fedunlearn.errors import UnlearningError
from fedunlearn.types import Delta
from fedunlearn.unlearning import get_method
from simulations.centralized_profiles import Profile
from simulations.centralized_training import capped, method_settings, with_delta
from simulations.paper.curves import Curve, Probe, step_budget
from simulations.paper.federation import FORGETTING_CLIENT, NUM_CLIENTS, Federation, train_federation
from simulations.paper.runner import ComputeModel
from simulations.paper.settings import CURVE_LABELS, PaperSetup, row

logger = logging.getLogger(__name__)
#: Budgets every step curve includes besides its evenly spaced ones.
EARLY_BUDGETS = (1, 2, 5, 10, 20)


def probe_of(fed: Federation, *, cap: int, seed: int) -> Probe:
    """FA on the deleted records, RA on all retained records, TA on the test set (capped, seeded)."""
    truth = fed.truth
    forget, retain = capped(truth.forget, cap, seed, 11), capped(truth.retain, cap, seed, 12)
    return Probe(forget, retain, capped(truth.test, cap, seed, 13))


def client_change(fed: Federation, profile: Profile, label: str, **extra: Any) -> Delta:
    """The client's change for row ``label`` of the figure's profile (``extra``: e.g. max_steps)."""
    spec = row(profile, label)
    return fed.correction(spec.method, method_settings(spec, profile, "paper", extra=extra)).delta


def history_curve(fed: Federation, profile: Profile, label: str, probe: Probe) -> tuple[Curve, float]:
    """Subtract the client's stored steps round by round; (curve, gap of its end to the method's correction)."""
    points = [fed.history_sum(label, fed.rounds[: i + 1]) for i in range(len(fed.rounds))]
    curve = Curve(label, "stored steps subtracted", points[-1][0])
    curve.add(0, probe.measure(fed.model))
    for steps, delta in points:
        curve.add(steps, probe.measure(with_delta(fed.model, delta)))
    full = client_change(fed, profile, label)
    gap = max(float((full[k] - v).abs().max()) for k, v in points[-1][1].items())
    return curve, gap


def step_curve(fed: Federation, profile: Profile, label: str, probe: Probe, *, points: int) -> Curve:
    """The client's method with budgets of 0 .. all of its steps: ``points`` evenly spaced
    budgets, and the first few steps (``EARLY_BUDGETS``), where ascent collapses or diverges."""
    budget = step_budget(row(profile, label), profile, len(fed.split.forget))
    curve = Curve(label, "unlearning SGD steps", budget)
    curve.add(0, probe.measure(fed.model))
    evenly = {int(round(x)) for x in np.linspace(0, budget, points)}
    for k in sorted((evenly | {b for b in EARLY_BUDGETS if b < budget}) - {0}):
        try:
            delta = client_change(fed, profile, label, max_steps=k)
        except UnlearningError as err:  # ascent can blow up: the curve ends where the method fails
            logger.warning("%s diverged within %d steps: %s", label, k, err)
            curve.diverged_at = k
            break
        curve.add(k, probe.measure(with_delta(fed.model, delta)))
    return curve


def federation_facts(fed: Federation, seconds: float) -> dict[str, Any]:
    """What the JSON records of the federation behind a cell."""
    return {
        "clients": NUM_CLIENTS,
        "forgetting_client": FORGETTING_CLIENT,
        "rounds": fed.rounds,
        "local_epochs": 1,
        "client_samples": len(fed.site.dataset),
        "train_and_rt_seconds": seconds,
    }


def curves_cell(
    setup: PaperSetup, profile: Profile, name: str, *, workdir: Path, data_root: str | None
) -> dict[str, Any]:
    """One model's federated curves and references (the cell of Figures 1 and 2 with --federated)."""
    start = time.perf_counter()
    fed = train_federation(setup, name, workdir=workdir, data_root=data_root)
    seconds = time.perf_counter() - start
    probe = probe_of(fed, cap=setup.eval_samples, seed=setup.seed)
    curves, gaps = {}, {}
    for label in CURVE_LABELS:
        if get_method(label).traits.history in ("pruned", "dense"):
            curve, gaps[label] = history_curve(fed, profile, label, probe)
        else:
            curve = step_curve(fed, profile, label, probe, points=setup.curve_points)
        curves[label] = curve.to_dict()
    return {
        "model": name,
        "train_seconds": seconds,
        "recorded_steps": fed.recorded_steps,
        "deletion": {"kind": "class", "forget_class": setup.forget_class, "size": len(fed.split.forget)},
        "federation": federation_facts(fed, seconds),
        "endpoint_gap": gaps,
        "original": probe.measure(fed.model),
        "references": {
            "RT": probe.measure(fed.rt),
            "amnesiac+ft": probe.measure(with_delta(fed.model, client_change(fed, profile, "amnesiac+ft"))),
        },
        "curves": curves,
    }


def curves_compute(data_root: str | None) -> ComputeModel:
    """``run_models``' compute function for the federated Figures 1 and 2."""

    def compute(
        setup: PaperSetup, profile: Profile, bundle: DatasetBundle, name: str, *, workdir: Path
    ) -> dict[str, Any]:
        return curves_cell(setup, profile, name, workdir=workdir, data_root=data_root)

    return compute
