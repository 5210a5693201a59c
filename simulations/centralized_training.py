"""Training the original model with its two histories, and serving a request with one method.

Used by ``simulations.centralized``: ``train_original`` trains once (seeded), recording the
same steps into a full history (keep_ratio 1.0, conventional amnesiac) and pruned ones
(``Profile.history_ratios()``, partial amnesiac), one history round per epoch, while logging
FA/RA curves; ``apply_method`` runs one registered method on a copy of the trained model.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fedunlearn.aggregation import add_scaled
from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import DatasetBundle, IndexedDataset
from fedunlearn.history import HistoryStore
from fedunlearn.models import build_model
from fedunlearn.training import FanOut, train_local
from fedunlearn.unlearning.base import ForgetRetainSplit, UnlearnContext, get_method
from simulations.centralized_profiles import DatasetSpec, MethodSpec, Profile
from simulations.recording import CurveLogger


@dataclass
class Cell:
    """A trained original model with its histories (by keep ratio), ready to serve deletion requests."""

    spec: DatasetSpec
    model_name: str
    train: IndexedDataset
    test: IndexedDataset
    model: nn.Module
    histories: dict[float, HistoryStore]
    train_config: TrainConfig
    bundle: DatasetBundle


def capped(data: IndexedDataset, cap: int | None, seed: int, stream: int) -> IndexedDataset:
    """Return ``data``, or a seeded random ``cap`` of it (``stream`` separates draws of one seed)."""
    if cap is None or len(data) <= cap:
        return data
    return data.select(np.sort(np.random.default_rng([seed, stream]).choice(len(data), size=cap, replace=False)))


def fresh_model(bundle: DatasetBundle, name: str, seed: int) -> nn.Module:
    """Model ``name`` initialised under ``torch.manual_seed(seed)`` (RT gets the same initial weights)."""
    torch.manual_seed(seed)
    return build_model(name, input_shape=bundle.input_shape, num_classes=bundle.num_classes)


def train_original(
    profile: Profile,
    spec: DatasetSpec,
    bundle: DatasetBundle,
    name: str,
    *,
    seed: int,
    tmp: Path,
    forget: dict[str, np.ndarray],
) -> tuple[Cell, dict[str, dict[str, list[float]]], float]:
    """Train once, recording every history (one round per epoch) and the FA/RA curves of each scenario.

    All histories (keep ratio 1.0 and each partial ratio of the profile) are fed by one
    observer, so they describe the very same training run.
    """
    train = capped(bundle.train, spec.train_samples, seed, 1)
    test = capped(bundle.test, spec.test_samples, seed, 2)
    config = TrainConfig(model=name, batch_size=profile.batch_size, lr=profile.lr, momentum=profile.momentum)
    model = fresh_model(bundle, name, seed)
    stores = {
        ratio: HistoryStore.for_model(tmp / f"keep-{ratio}", model=model, config=HistoryConfig(keep_ratio=ratio))
        for ratio in profile.history_ratios()
    }
    probes = {
        s: (
            capped(train.subset_by_ids(ids), profile.curve_eval_samples, seed, 3),
            capped(train.without_ids(ids), profile.curve_eval_samples, seed, 4),
        )
        for s, ids in forget.items()
    }
    per_epoch = train.num_batches(profile.batch_size)
    curves = CurveLogger(probes, points_per_epoch=profile.curve_points_per_epoch, per_epoch=per_epoch)
    curves.measure(model)
    start = time.perf_counter()
    for epoch in tqdm(range(profile.epochs), desc=f"train {spec.name}/{name}", leave=False):
        with ExitStack() as stack:
            recorders = [stack.enter_context(store.record_round(epoch)) for store in stores.values()]
            observer = FanOut(*recorders, curves)
            train_local(model, train, config=config, seed=seed * 10_007 + epoch, epochs=1, observer=observer)
    seconds = time.perf_counter() - start
    return Cell(spec, name, train, test, model, stores, config, bundle), curves.curves, seconds


def apply_method(
    cell: Cell, spec: MethodSpec, profile: Profile, split: ForgetRetainSplit, *, scenario: str, seed: int
) -> tuple[nn.Module, float, float]:
    """Serve the request with one method; returns (unlearned model, seconds, keep ratio)."""
    config = spec.config(profile, scenario, epochs=profile.epochs)
    ratio = spec.history_ratio(profile)
    history = None if ratio is None else cell.histories[ratio]
    context = UnlearnContext(
        history=history,
        history_weighted=False,
        train_config=cell.train_config,
        seed=seed,
        model_factory=lambda: fresh_model(cell.bundle, cell.model_name, seed),
    )
    start = time.perf_counter()
    correction = get_method(spec.method)(cell.model, split=split, config=config, context=context)
    unlearned = copy.deepcopy(cell.model)
    unlearned.load_state_dict(add_scaled(cell.model.state_dict(), correction.delta))
    return unlearned, time.perf_counter() - start, spec.keep_ratio(profile, config)
