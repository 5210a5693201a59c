"""Contract tests every registered unlearning method must pass (registry, empty set, NaN, D_r)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fedunlearn.aggregation import add_scaled
from fedunlearn.config import HistoryConfig, MethodSettings, TrainConfig, UnlearnConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import ConfigError, UnknownMethodError, UnlearningError
from fedunlearn.history import HistoryStore
from fedunlearn.training import train_local
from fedunlearn.unlearning import (
    Correction,
    ForgetRetainSplit,
    MethodTraits,
    UnlearnContext,
    available_methods,
    get_method,
    method_settings,
)
from fedunlearn.unlearning.amnesiac import AmnesiacSettings
from fedunlearn.unlearning.sfr_on import SFROnSettings
from fedunlearn.unlearning.steps import AscentSettings

#: Methods that compute a client-side correction from the model and the split.
CORRECTION_METHODS = [
    "amnesiac",
    "finetune",
    "gradient_ascent",
    "label_flip",
    "partial_amnesiac",
    "partial_gradient_ascent",
    "partial_label_flip",
    "pga",
    "random_label",
    "retrain",
    "sfr_on",
]
#: ``none`` is the do-nothing control; ``federaser`` is served by a server-side phase.
EXPECTED_METHODS = sorted([*CORRECTION_METHODS, "federaser", "none"])
TRAIN = TrainConfig(model="tiny", local_epochs=1, batch_size=8, lr=0.1)
#: Small budgets shared by the step methods (each takes the fields its settings declare).
STEP_VALUES = {"epochs": 2, "batch_size": 8, "lr": 0.05, "select_ratio": 0.3}


def settings_of(name: str) -> MethodSettings:
    """Each method's small test settings (SFR-on: 6 iterations, a forget step every 2)."""
    if name == "sfr_on":
        return SFROnSettings(iters=6, forget_freq=2, batch_size=8)
    settings_type = get_method(name).settings_type
    fields = {f.name for f in dataclasses.fields(settings_type)}
    return settings_type(**{k: v for k, v in STEP_VALUES.items() if k in fields})


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make_data(n: int = 48, seed: int = 0) -> IndexedDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return IndexedDataset(x, y, torch.arange(100, 100 + n), 3)


def split_of(data: IndexedDataset, forget_positions: list[int]) -> ForgetRetainSplit:
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[forget_positions] = True
    return ForgetRetainSplit(forget=data.select(mask), retain=data.select(~mask))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, IndexedDataset, HistoryStore]:
    """A tiny model trained two rounds with a full history (one client, centralized)."""
    model, data = tiny_model(), make_data()
    store = HistoryStore.for_model(
        Path(tmp_path_factory.mktemp("history")), model=model, config=HistoryConfig(keep_ratio=1.0)
    )
    for r in (1, 2):
        with store.record_round(r) as rec:
            train_local(model, data, config=TRAIN, seed=r, observer=rec)
    return model, data, store


def full_context(store: HistoryStore, seed: int = 0) -> UnlearnContext:
    return UnlearnContext(history=store, train_config=TRAIN, model_factory=tiny_model, seed=seed)


def run(name: str, model: nn.Module, split: ForgetRetainSplit, context: UnlearnContext) -> Correction:
    """Call a method; warnings about degenerate settings are tested in the method's own tests."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_method(name)(model, split=split, settings=settings_of(name), context=context)


def test_every_method_is_registered() -> None:
    assert available_methods() == EXPECTED_METHODS


def test_unknown_method_lists_the_registered_names() -> None:
    with pytest.raises(UnknownMethodError) as info:
        get_method("amnesia")
    message = str(info.value)
    assert "'amnesia'" in message
    assert all(name in message for name in EXPECTED_METHODS)


@pytest.mark.parametrize("name", [*CORRECTION_METHODS, "none"])
def test_empty_forget_set_leaves_weights_bit_identical(name: str, trained: tuple) -> None:
    model, data, store = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = split_of(data, [])

    correction = get_method(name)(model, split=split, settings=settings_of(name), context=full_context(store))

    assert correction.method == name
    assert all(bool((d == 0).all()) for d in correction.delta.values())
    after = add_scaled(model.state_dict(), correction.delta)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize("name", CORRECTION_METHODS)
def test_method_changes_a_copy_and_is_reproducible(name: str, trained: tuple) -> None:
    model, data, store = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split = split_of(data, [0, 5, 9])

    first = run(name, model, split, full_context(store, seed=3))
    second = run(name, model, split, full_context(store, seed=3))

    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    assert set(first.delta) == {k for k, v in before.items() if v.is_floating_point()}
    assert all(torch.equal(first.delta[k], second.delta[k]) for k in first.delta)
    assert any(bool((d != 0).any()) for d in first.delta.values())
    assert all(bool(torch.isfinite(d).all()) for d in first.delta.values())
    assert first.cost.seconds > 0 and math.isfinite(first.cost.seconds)


@pytest.mark.parametrize("name", [*CORRECTION_METHODS, "none"])
def test_nan_weights_raise_instead_of_returning_a_broken_model(name: str, trained: tuple) -> None:
    model, data, store = trained
    broken = tiny_model()
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken[1].weight[0, 0] = float("nan")

    with pytest.raises(UnlearningError, match="NaN"):
        run(name, broken, split_of(data, [0, 5, 9]), full_context(store))


@pytest.mark.parametrize("name", ["finetune", "random_label", "retrain", "sfr_on"])
def test_forget_set_equal_to_the_whole_data_needs_retained_data(name: str, trained: tuple) -> None:
    model, data, store = trained

    with pytest.raises(UnlearningError, match="D_r is empty"):
        get_method(name)(
            model,
            split=split_of(data, list(range(len(data)))),
            settings=settings_of(name),
            context=full_context(store),
        )


def test_amnesiac_needs_retained_data_only_to_fine_tune(trained: tuple) -> None:
    model, data, store = trained
    split = split_of(data, list(range(len(data))))

    with pytest.raises(UnlearningError, match="D_r is empty"):
        get_method("amnesiac")(
            model, split=split, settings=AmnesiacSettings(finetune_epochs=1), context=full_context(store)
        )
    correction = get_method("amnesiac")(model, split=split, settings=AmnesiacSettings(), context=full_context(store))
    assert correction.cost.history_steps == 12


def test_huge_learning_rate_raises_on_non_finite_loss(trained: tuple) -> None:
    model, data, store = trained
    settings = AscentSettings(lr=1e30, epochs=3, batch_size=8)

    with pytest.raises(UnlearningError, match="Inf|NaN|nan|inf"):
        get_method("gradient_ascent")(
            model, split=split_of(data, list(range(24))), settings=settings, context=full_context(store)
        )


def test_none_control_returns_a_zero_correction_for_any_forget_set(trained: tuple) -> None:
    model, data, store = trained

    correction = run("none", model, split_of(data, [0, 5, 9]), full_context(store))

    assert get_method("none").traits.control
    assert set(correction.delta) == {k for k, v in model.state_dict().items() if v.is_floating_point()}
    assert all(bool((d == 0).all()) for d in correction.delta.values())


def test_federaser_has_no_client_correction_and_is_served_by_a_server_phase(trained: tuple) -> None:
    model, data, store = trained
    traits = get_method("federaser").traits

    with pytest.raises(UnlearningError, match="server"):
        run("federaser", model, split_of(data, [0, 5, 9]), full_context(store))
    assert traits.server_phase and traits.history == "server"
    assert traits.kinds == frozenset({"client"})


@pytest.mark.parametrize("name", EXPECTED_METHODS)
def test_every_method_declares_traits_and_valid_default_settings(name: str) -> None:
    spec = get_method(name)

    defaults = spec.defaults()

    assert isinstance(spec.traits, MethodTraits)
    assert isinstance(defaults, spec.settings_type) and isinstance(defaults, MethodSettings)
    assert defaults.outer_steps >= 1 and defaults.remain_steps >= 0
    assert spec.traits.fast in ("none", "once", "spread")
    assert spec.traits.strengthen in ("none", "scale", "repeat")


def test_settings_of_another_method_are_a_config_error(trained: tuple) -> None:
    model, data, store = trained

    with pytest.raises(ConfigError, match="SFROnSettings"):
        get_method("gradient_ascent")(
            model, split=split_of(data, [0]), settings=SFROnSettings(), context=full_context(store)
        )


def test_needs_retain_depends_on_the_settings() -> None:
    amnesiac = get_method("amnesiac")

    assert not amnesiac.needs_retain(AmnesiacSettings())
    assert amnesiac.needs_retain(AmnesiacSettings(finetune_epochs=1))
    assert get_method("sfr_on").needs_retain(SFROnSettings())
    assert not get_method("label_flip").needs_retain(get_method("label_flip").defaults())


def test_method_settings_returns_the_configured_settings_or_the_defaults() -> None:
    config = UnlearnConfig(method="sfr_on", settings={"sfr_on": SFROnSettings(iters=30)})

    assert method_settings(config).iters == 30
    assert method_settings(config, "sfr_on") == SFROnSettings(iters=30)
    assert method_settings(config, "pga") == get_method("pga").defaults()
