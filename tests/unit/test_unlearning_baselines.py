"""Baselines: retrain (RT), fine-tune (FT), random-label (RL)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedunlearn.aggregation import add_scaled
from fedunlearn.config import TrainConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.training import train_local
from fedunlearn.unlearning import ForgetRetainSplit, UnlearnContext, get_method
from fedunlearn.unlearning.common import derive_generator
from fedunlearn.unlearning.label_flip import relabel_wrong
from fedunlearn.unlearning.steps import StepSettings

TRAIN = TrainConfig(model="tiny", local_epochs=1, batch_size=8, lr=0.1)


def bn_model() -> nn.Module:
    """Tiny model with BatchNorm, so RT's correction must carry the running statistics."""
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make_split(n_forget: int = 6, n_retain: int = 18) -> ForgetRetainSplit:
    g = torch.Generator().manual_seed(7)
    n = n_forget + n_retain
    data = IndexedDataset(torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n), 3)
    return ForgetRetainSplit(forget=data.select(torch.arange(n_forget)), retain=data.select(torch.arange(n_forget, n)))


def gd_steps(model: nn.Module, data: IndexedDataset, *, steps: int, lr: float) -> nn.Module:
    """Full-batch plain gradient descent (what a one-batch epoch of SGD is)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.inputs), data.labels).backward()
        optimizer.step()
    return model


def test_retrain_correction_turns_the_model_into_the_retrained_one() -> None:
    torch.manual_seed(123)
    model, split = bn_model(), make_split()
    context = UnlearnContext(train_config=TRAIN, model_factory=bn_model, seed=4)

    correction = get_method("retrain")(model, split=split, settings=StepSettings(epochs=2), context=context)

    torch.manual_seed(4)
    expected = bn_model()
    train_local(expected, split.retain, config=TRAIN, seed=4, epochs=2)
    result = add_scaled(model.state_dict(), correction.delta)
    floats = {k: v for k, v in expected.state_dict().items() if v.is_floating_point()}
    assert set(correction.delta) == set(floats)  # integer num_batches_tracked is not a float entry
    for name, value in floats.items():
        torch.testing.assert_close(result[name], value, rtol=1e-5, atol=1e-6)
    assert "2.running_mean" in correction.delta and bool((correction.delta["2.running_mean"] != 0).any())
    assert correction.cost.forward_backward == 2 * 3


@pytest.mark.parametrize("missing", ["model_factory", "train_config"])
def test_retrain_without_factory_or_train_config_is_an_error(missing: str) -> None:
    kwargs = {"model_factory": tiny_model, "train_config": TRAIN}
    kwargs.pop(missing)

    with pytest.raises(UnlearningError, match=missing):
        get_method("retrain")(
            tiny_model(), split=make_split(), settings=StepSettings(), context=UnlearnContext(**kwargs)
        )


def test_retrain_rejects_a_factory_of_another_architecture() -> None:
    context = UnlearnContext(train_config=TRAIN, model_factory=lambda: nn.Linear(16, 3))

    with pytest.raises(UnlearningError, match="factory"):
        get_method("retrain")(tiny_model(), split=make_split(), settings=StepSettings(), context=context)


def test_finetune_descends_on_retained_data_only() -> None:
    model, split = tiny_model(), make_split()
    settings = StepSettings(epochs=3, batch_size=64, lr=0.1)  # one batch per epoch

    correction = get_method("finetune")(model, split=split, settings=settings, context=UnlearnContext())

    expected = gd_steps(tiny_model(), split.retain, steps=3, lr=0.1)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name] + correction.delta[name], value, rtol=1e-5, atol=1e-6)


def test_finetune_respects_max_steps() -> None:
    correction = get_method("finetune")(
        tiny_model(),
        split=make_split(),
        settings=StepSettings(epochs=5, batch_size=4, max_steps=7),
        context=UnlearnContext(),
    )

    assert correction.cost.forward_backward == 7


def test_random_label_descends_on_wrongly_labelled_forget_set_joined_with_retained_data() -> None:
    model, split = tiny_model(), make_split()
    settings = StepSettings(epochs=2, batch_size=64, lr=0.1, max_steps=None)

    correction = get_method("random_label")(model, split=split, settings=settings, context=UnlearnContext(seed=9))

    flipped = relabel_wrong(split.forget, generator=derive_generator(9, "wrong-labels"))
    assert bool((flipped.labels != split.forget.labels).all())
    union = IndexedDataset.concat([flipped, split.retain])
    expected = gd_steps(tiny_model(), union, steps=2, lr=0.1)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name] + correction.delta[name], value, rtol=1e-5, atol=1e-6)
