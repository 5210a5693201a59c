"""Profiles of the centralized reproduction (``python -m simulations.centralized``) and its forget sets.

A profile fixes everything a run does: datasets and models, training (epochs, SGD), the
history keep ratio rho of partial amnesiac, the methods with their hyper-parameters, the
forgetting scenarios and the Figure 4 sweep. Hyper-parameters were tuned on the ``quick``
profile only (MNIST subset, MLP/LeNet) and reused unchanged by ``full``; the comments next to
them say what was tried.

Scenarios (forget sets, all drawn from the training set):

- ``class``: every training sample of ``DatasetSpec.forget_class`` (class 0 by default:
  the digit 0 on MNIST, the bladder on OrganAMNIST). Class forgetting touches almost every
  batch, the hardest case for amnesiac unlearning.
- ``random10``: a seeded uniform random ``Profile.random_fraction`` (10%) of the training set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import ConfigError, UnknownNameError

HistoryKind = Literal["full", "partial"]


@dataclass(frozen=True)
class MethodSpec:
    """One row of the results table: a registered method with its settings.

    ``label`` names the row (``"amnesiac+ft"``), ``method`` the registry entry
    (``"amnesiac"``); ``history`` says which recorded history the method reads (``"full"``:
    keep_ratio 1.0, ``"partial"``: keep_ratio ``history_keep``, default ``Profile.keep_ratio``;
    every keep ratio named is recorded during the same training run); ``overrides`` are
    fields of the method's own settings dataclass (on top of ``Profile.unlearn``),
    ``scenario_overrides`` further ones per scenario.
    """

    label: str
    method: str
    history: HistoryKind | None = None
    history_keep: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    scenario_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def setting_values(self, profile: Profile, scenario: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(shared defaults, row settings) of this row in ``scenario``.

        Shared defaults (``epochs``: the training epochs, then ``Profile.unlearn``) apply to
        the fields the method's settings type has; row settings (``overrides``, then
        ``scenario_overrides[scenario]``) must all be fields of it. The settings object itself
        is built in one place, ``simulations.centralized_training.method_settings``.
        """
        shared: dict[str, Any] = {"epochs": profile.epochs, **profile.unlearn}
        return shared, {**self.overrides, **self.scenario_overrides.get(scenario, {})}

    def history_ratio(self, profile: Profile) -> float | None:
        """Keep ratio of the history this row reads (None: it reads none)."""
        if self.history is None:
            return None
        return 1.0 if self.history == "full" else self.history_keep or profile.keep_ratio

    def keep_ratio(self, profile: Profile, settings: Any) -> float:
        """Fraction of each layer's update entries the method applies (1.0: unpruned)."""
        ratio = self.history_ratio(profile)
        if ratio is not None:
            return ratio
        return float(getattr(settings, "select_ratio", 1.0))


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset, the models trained on it, and size caps (None: the whole split)."""

    name: str
    models: tuple[str, ...]
    train_samples: int | None = None
    test_samples: int | None = None
    forget_class: int = 0


@dataclass(frozen=True)
class Profile:
    """Everything one centralized run does; validated on construction.

    Training is plain SGD (``lr``, ``momentum``, ``batch_size``) for ``epochs`` epochs, one
    history round per epoch. ``curve_points_per_epoch`` FA/RA evaluations per epoch (on at
    most ``curve_eval_samples`` samples each side) draw the Figure 1-2 curves.
    ``sweep_batch_fractions``: target fractions of affected batches for Figure 4 (forget sets
    are subsets of the forget class sized to hit them); ``sweep_models`` restricts the sweep
    (None: every model). ``max_shadow`` / ``max_retain_eval`` go to evaluate_unlearning.
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    epochs: int
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.0
    keep_ratio: float = 0.1
    scenarios: tuple[str, ...] = ("class", "random10")
    random_fraction: float = 0.1
    sweep_batch_fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5)
    sweep_models: tuple[str, ...] | None = None
    curve_points_per_epoch: int = 4
    curve_eval_samples: int = 1000
    max_shadow: int = 1000
    max_retain_eval: int = 5000
    unlearn: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = ", ".join(SCENARIOS)
        problems = [f"unknown scenario {s!r}; known: {known}" for s in self.scenarios if s not in SCENARIOS]
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            problems.append(f"method labels must be unique, got {labels}")
        if "RT" not in labels:
            problems.append(f"a profile needs the RT row (label 'RT', method 'retrain'); labels: {labels}")
        for ratio in [self.keep_ratio] + [m.history_keep for m in self.methods if m.history_keep is not None]:
            if not 0.0 < ratio < 1.0:
                problems.append(f"partial history keep ratios must be in (0, 1), got {ratio}")
        if not 0.0 < self.random_fraction < 1.0:
            problems.append(f"random_fraction must be in (0, 1), got {self.random_fraction}")
        if any(not 0.0 < f < 1.0 for f in self.sweep_batch_fractions):
            problems.append(f"sweep_batch_fractions must lie in (0, 1), got {self.sweep_batch_fractions}")
        for name in ("epochs", "batch_size", "curve_points_per_epoch", "curve_eval_samples", "max_shadow"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ConfigError(problems)

    def history_ratios(self) -> list[float]:
        """Keep ratios recorded while training: 1.0, ``keep_ratio`` and any a row names."""
        named = {r for m in self.methods if (r := m.history_ratio(self)) is not None}
        return sorted(named | {1.0, self.keep_ratio}, reverse=True)

    def method(self, label: str) -> MethodSpec | None:
        """Return the row labelled ``label``, or None."""
        return next((m for m in self.methods if m.label == label), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (recorded in results.json)."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ scenarios

ScenarioFn = Callable[[IndexedDataset, DatasetSpec, Profile, int], np.ndarray]
SCENARIOS: dict[str, ScenarioFn] = {}


def register_scenario(name: str) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register ``fn(train, spec, profile, seed) -> forget sample ids`` under ``name``."""

    def decorator(fn: ScenarioFn) -> ScenarioFn:
        SCENARIOS[name] = fn
        return fn

    return decorator


@register_scenario("class")
def forget_class(train: IndexedDataset, spec: DatasetSpec, profile: Profile, seed: int) -> np.ndarray:
    """Every training sample of ``spec.forget_class``."""
    ids: np.ndarray = train.ids()[train.labels.numpy() == spec.forget_class]
    return ids


@register_scenario("random10")
def forget_random(train: IndexedDataset, spec: DatasetSpec, profile: Profile, seed: int) -> np.ndarray:
    """Pick a seeded uniform random ``profile.random_fraction`` of the training samples."""
    rng = np.random.default_rng([seed, 10])
    count = max(1, round(profile.random_fraction * len(train)))
    return np.sort(rng.choice(train.ids(), size=count, replace=False))


def sweep_forget_sets(
    class_ids: np.ndarray, *, steps_per_epoch: int, fractions: Sequence[float], seed: int
) -> list[tuple[float, np.ndarray]]:
    """Nested subsets of ``class_ids`` expected to touch each target fraction of batches.

    Each sample sits in one batch per epoch, at a uniformly random place, so k samples touch
    ``1 - (1 - 1/B)^k`` of the B batches of an epoch; k is solved from that. The whole class
    is added as the last point (nearly every batch). The actual fraction is measured from the
    history by the caller.
    """
    order = np.random.default_rng([seed, 4]).permutation(class_ids)
    sets, per_batch_miss = [], 1.0 - 1.0 / max(steps_per_epoch, 2)
    for fraction in sorted(fractions):
        k = min(len(order), max(1, math.ceil(math.log(1.0 - fraction) / math.log(per_batch_miss))))
        sets.append((fraction, np.sort(order[:k])))
    sets.append((1.0, np.sort(order)))
    return sets


# ------------------------------------------------------------------------------- profiles

# Hyper-parameters, tuned on the quick profile only (MNIST 20k, MLP and LeNet, 3 epochs of SGD
# lr 0.05, batch 64) by looking at FA/RA/TA of both scenarios, then frozen for every profile:
# - rho (keep_ratio) of partial amnesiac: 0.01, 0.03, 0.1, 0.3 tried. None forgets a class
#   without wrecking RA (class and random-10% forget sets touch ~100% of batches). 0.1 (the
#   HistoryConfig default) is the headline row; 0.01, which keeps RA best in the Figure 4
#   sweep, is a second row ("partial_amnesiac@0.01").
# - gradient ascent (both versions): lr 0.001/0.002/0.003/0.005/0.01, 1-5 epochs, target_fa
#   0.05 tried. Ascent is a cliff: it either does little or collapses the model within one
#   epoch, and target_fa (checked once per epoch) cannot stop it in time. A step budget works:
#   lr 0.01 for max_steps 10 forgets the class with both models (lr 0.005 barely moves FA).
# - label flip (both versions): lr 0.005 and 0.01, 1-2 epochs tried; lr 0.005, 1 epoch (lr
#   0.01 costs LeNet 50 points of RA on random10, and 2 epochs add nothing on class).
# - amnesiac+ft, finetune: one epoch at the training lr 0.05. random_label: one epoch, lr 0.01.
# - sfr_on: SFROnSettings defaults (150 iterations, official settings otherwise).
UNLEARN_DEFAULTS: dict[str, Any] = {"lr": 0.01, "batch_size": 64, "select_ratio": 0.1}
_ASCENT = {"lr": 0.01, "epochs": 1, "max_steps": 10}
_FLIP = {"lr": 0.005, "epochs": 1}

METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("RT", "retrain"),
    MethodSpec("amnesiac", "amnesiac", history="full", overrides={"finetune_epochs": 0}),
    MethodSpec("amnesiac+ft", "amnesiac", history="full", overrides={"finetune_epochs": 1, "lr": 0.05}),
    MethodSpec("partial_amnesiac", "partial_amnesiac", history="partial", overrides={"finetune_epochs": 0}),
    MethodSpec("partial_amnesiac@0.01", "partial_amnesiac", history="partial", history_keep=0.01),
    MethodSpec("label_flip", "label_flip", overrides=_FLIP),
    MethodSpec("partial_label_flip", "partial_label_flip", overrides=_FLIP),
    MethodSpec("gradient_ascent", "gradient_ascent", overrides=_ASCENT),
    MethodSpec("partial_gradient_ascent", "partial_gradient_ascent", overrides=_ASCENT),
    MethodSpec("sfr_on", "sfr_on"),
    MethodSpec("finetune", "finetune", overrides={"epochs": 1, "lr": 0.05}),
    MethodSpec("random_label", "random_label", overrides={"epochs": 1}),
)

QUICK = Profile(
    name="quick",
    datasets=(DatasetSpec("mnist", ("mlp", "lenet"), train_samples=20_000, test_samples=5_000),),
    methods=METHODS,
    epochs=3,
    unlearn=UNLEARN_DEFAULTS,
    sweep_models=("mlp",),
)

FULL = Profile(
    name="full",
    datasets=(
        DatasetSpec("mnist", ("mlp", "lenet", "resnet9")),
        DatasetSpec("organamnist", ("convnet", "alexnet", "resnet9")),
    ),
    methods=METHODS,
    epochs=5,
    unlearn=UNLEARN_DEFAULTS,
    max_shadow=2000,
    max_retain_eval=10_000,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (QUICK, FULL)}


def get_profile(name: str) -> Profile:
    """Return the registered profile ``name`` (UnknownNameError lists the others)."""
    if name not in PROFILES:
        raise UnknownNameError("profile", name, PROFILES)
    return PROFILES[name]


def _pick(kind: str, wanted: Sequence[str], known: Sequence[str]) -> list[str]:
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ConfigError(f"unknown {kind} {unknown}; this profile has: {', '.join(known)}")
    return list(wanted)


def restrict(
    profile: Profile,
    *,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> Profile:
    """``profile`` limited to some datasets / methods (by label), or with other models.

    ``models`` replaces every dataset's model list (any registered model; the Figure 4 sweep
    then runs on the first of them unless ``sweep_models`` names one). RT is always kept,
    since every other row is measured against it.
    """
    specs = list(profile.datasets)
    if datasets:
        keep = _pick("dataset(s)", datasets, [s.name for s in specs])
        specs = [s for s in specs if s.name in keep]
    sweep = profile.sweep_models
    if models:
        specs = [dataclasses.replace(s, models=tuple(models)) for s in specs]
        sweep = sweep if sweep is None or set(sweep) & set(models) else (models[0],)
    rows = list(profile.methods)
    if methods:
        labels = set(_pick("method label(s)", methods, [m.label for m in rows])) | {"RT"}
        rows = [m for m in rows if m.label in labels]
    return dataclasses.replace(profile, datasets=tuple(specs), methods=tuple(rows), sweep_models=sweep)
