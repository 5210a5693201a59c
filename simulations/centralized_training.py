"""Training the original model with its histories, and the one adapter to the unlearning methods.

Used by ``simulations.centralized`` and ``simulations.paper``: ``train_recording`` trains
once (seeded), recording the same steps into several histories at once (keep_ratio 1.0 for
conventional amnesiac, pruned ones for partial amnesiac), one history round per epoch;
``train_original`` does so for a profile while logging FA/RA curves.

``method_settings`` and ``compute_correction`` are the only places where a method's
settings object is built and a registered method is called (``get_method``): a change of
the unlearning-method API is absorbed here. ``apply_method`` serves a request on a copy of
the trained model.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fedunlearn.aggregation import add_scaled
from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import DatasetBundle, IndexedDataset
from fedunlearn.errors import ConfigError
from fedunlearn.history import HistoryStore
from fedunlearn.history.recorder import RoundRecorder
from fedunlearn.models import build_model
from fedunlearn.training import FanOut, StepObserver, train_local
from fedunlearn.unlearning.base import Correction, ForgetRetainSplit, UnlearnContext, get_method
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


Wrap = Callable[[Any, int, RoundRecorder], StepObserver]


def train_recording(
    model: nn.Module,
    train: IndexedDataset,
    *,
    config: TrainConfig,
    epochs: int,
    seed: int,
    stores: Mapping[Any, HistoryStore],
    observers: Sequence[StepObserver] = (),
    wrap: Wrap | None = None,
    desc: str = "train",
) -> float:
    """Train ``model`` in place for ``epochs`` epochs, every store recording one round per epoch.

    All stores (and ``observers``) see the very same steps, so the histories describe one
    training run. ``wrap(key, epoch, recorder)`` may put an observer around a store's
    recorder (e.g. one that records coarser steps, or none in some epochs). Epoch e
    shuffles with seed ``seed * 10_007 + e``. Returns the wall time in seconds.
    """
    start = time.perf_counter()
    for epoch in tqdm(range(epochs), desc=desc, leave=False):
        with ExitStack() as stack:
            recorders: list[StepObserver] = []
            for key, store in stores.items():
                recorder = stack.enter_context(store.record_round(epoch))
                recorders.append(wrap(key, epoch, recorder) if wrap is not None else recorder)
            observer = FanOut(*recorders, *observers)
            train_local(model, train, config=config, seed=seed * 10_007 + epoch, epochs=1, observer=observer)
    return time.perf_counter() - start


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
    seconds = train_recording(
        model,
        train,
        config=config,
        epochs=profile.epochs,
        seed=seed,
        stores=stores,
        observers=[curves],
        desc=f"train {spec.name}/{name}",
    )
    return Cell(spec, name, train, test, model, stores, config, bundle), curves.curves, seconds


# ------------------------------------------------------------------ the adapter to the methods


def check_methods(names: Iterable[str]) -> None:
    """Fail before any training if a name is not a registered method (the error lists them)."""
    for name in names:
        get_method(name)


def method_settings(
    spec: MethodSpec, profile: Profile, scenario: str, *, extra: Mapping[str, Any] | None = None
) -> Any:
    """The settings object of row ``spec`` in ``scenario`` (``extra``: further row settings).

    Shared defaults (``MethodSpec.setting_values``) fill the fields the method's settings
    type has; row settings and ``extra`` must be fields of it (ConfigError otherwise).
    """
    settings_type = get_method(spec.method).settings_type
    fields = {f.name for f in dataclasses.fields(settings_type)}
    shared, own = spec.setting_values(profile, scenario)
    own = {**own, **(extra or {})}
    unknown = sorted(set(own) - fields)
    if unknown:
        raise ConfigError(
            f"row {spec.label!r}: {settings_type.__name__} has no field(s) {unknown}; its fields are {sorted(fields)}"
        )
    return settings_type(**{**{k: v for k, v in shared.items() if k in fields}, **own})


def compute_correction(
    cell: Cell,
    spec: MethodSpec,
    profile: Profile,
    split: ForgetRetainSplit,
    *,
    scenario: str,
    seed: int,
    history: HistoryStore | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Correction:
    """Run row ``spec`` on ``cell.model`` (not modified) and return its Correction.

    ``history`` replaces the store the row reads by default (``cell.histories`` at the
    row's keep ratio), e.g. a history recorded with another selector; ``extra`` adds row
    settings (e.g. ``max_steps`` for a point of an unlearning curve).
    """
    settings = method_settings(spec, profile, scenario, extra=extra)
    ratio = spec.history_ratio(profile)
    if history is None and ratio is not None:
        history = cell.histories[ratio]
    context = UnlearnContext(
        history=history,
        history_weighted=False,
        train_config=cell.train_config,
        seed=seed,
        model_factory=lambda: fresh_model(cell.bundle, cell.model_name, seed),
    )
    return get_method(spec.method)(cell.model, split=split, settings=settings, context=context)


def with_delta(model: nn.Module, delta: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with ``delta`` added to its floating-point state."""
    changed = copy.deepcopy(model)
    changed.load_state_dict(add_scaled(model.state_dict(), dict(delta)))
    return changed


def apply_method(
    cell: Cell, spec: MethodSpec, profile: Profile, split: ForgetRetainSplit, *, scenario: str, seed: int
) -> tuple[nn.Module, float, float]:
    """Serve the request with one method; returns (unlearned model, seconds, keep ratio)."""
    start = time.perf_counter()
    correction = compute_correction(cell, spec, profile, split, scenario=scenario, seed=seed)
    unlearned = with_delta(cell.model, correction.delta)
    keep = spec.keep_ratio(profile, method_settings(spec, profile, scenario))
    return unlearned, time.perf_counter() - start, keep
