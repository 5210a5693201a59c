"""PGA (Halimi et al. 2022): projection onto the L2 ball, radius rule, ascent, stopping, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedunlearn.aggregation import add_scaled
from fedunlearn.config import TrainConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.metrics import evaluate_loss_accuracy
from fedunlearn.training import train_local
from fedunlearn.unlearning import ForgetRetainSplit, UnlearnContext, available_methods, get_method
from fedunlearn.unlearning.pga import (
    PGA_RANDOM_MODELS,
    ball_radius,
    parameter_vector,
    pga,
    project_to_ball,
    stop_loss,
)
from fedunlearn.unlearning.steps import AscentSettings

SETTINGS = AscentSettings(epochs=3, batch_size=8, lr=0.05)


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def make_data(n: int, seed: int) -> IndexedDataset:
    """Learnable synthetic data: the label is the argmax of a fixed linear map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x @ torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [0.5, 0.5, 0.5]])).argmax(1)
    return IndexedDataset(x, y, torch.arange(n), 3)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, IndexedDataset]:
    torch.manual_seed(0)
    model, data = tiny_model(), make_data(64, seed=1)
    train_local(model, data, config=TrainConfig(model="tiny", local_epochs=30, batch_size=16, lr=0.2), seed=0)
    return model, data


def split_of(data: IndexedDataset, forget: int) -> ForgetRetainSplit:
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[:forget] = True
    return ForgetRetainSplit(forget=data.select(mask), retain=data.select(~mask))


def context(seed: int = 0) -> UnlearnContext:
    return UnlearnContext(model_factory=tiny_model, seed=seed)


def test_projection_moves_an_outside_point_onto_the_sphere_along_the_ray() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))

    projected = project_to_ball(model, torch.zeros(2), 2.5)

    assert projected
    assert torch.allclose(model.weight, torch.tensor([[1.5, 2.0]]))  # (3, 4) * 2.5 / 5


def test_projection_leaves_an_inside_point_bit_identical() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.4]]))

    projected = project_to_ball(model, torch.tensor([0.1, 0.1]), 1.0)

    assert not projected
    assert torch.equal(model.weight, torch.tensor([[0.3, -0.4]]))


def test_radius_is_sqrt_of_mean_squared_distance_over_three() -> None:
    reference = torch.zeros(3)
    randoms = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([0.0, 0.0, 6.0])]  # squared norms 9 and 36

    assert ball_radius(reference, randoms) == pytest.approx(math.sqrt((9 + 36) / 2 / 3))


def test_stop_loss_is_the_cross_entropy_of_a_uniform_guess() -> None:
    uniform = nn.functional.cross_entropy(torch.zeros(1, 10), torch.tensor([3]))

    assert stop_loss(10) == pytest.approx(float(uniform))


def test_pga_stays_in_the_ball_around_the_given_model(trained: tuple) -> None:
    model, data = trained
    near = [
        parameter_vector(model)
        + 0.01 * torch.randn(parameter_vector(model).shape, generator=torch.Generator().manual_seed(i))
        for i in range(3)
    ]

    def close_factory() -> nn.Module:  # random models close to w_ref make a small ball
        fresh = tiny_model()
        nn.utils.vector_to_parameters(near[len(calls) % 3], fresh.parameters())
        calls.append(1)
        return fresh

    calls: list[int] = []
    correction = get_method("pga")(
        model, split=split_of(data, 16), settings=SETTINGS, context=UnlearnContext(model_factory=close_factory, seed=0)
    )

    distance = math.sqrt(sum(float((d**2).sum()) for d in correction.delta.values()))
    assert len(calls) == PGA_RANDOM_MODELS
    assert correction.cost.extra["projections"] >= 1
    assert distance <= correction.info["radius"] * (1 + 1e-5)
    assert correction.info["radius"] < 0.05


def test_pga_raises_the_loss_on_the_forget_set(trained: tuple) -> None:
    model, data = trained
    split = split_of(data, 16)
    before = evaluate_loss_accuracy(model, split.forget)

    correction = pga(model, split=split, settings=AscentSettings(epochs=3, batch_size=8, lr=0.5), context=context())
    unlearned = tiny_model()
    unlearned.load_state_dict(add_scaled(model.state_dict(), correction.delta))
    after = evaluate_loss_accuracy(unlearned, split.forget)

    assert before.loss < 0.5 < stop_loss(3)
    assert after.loss > before.loss + 0.5
    assert correction.info["forget_loss"] == pytest.approx(after.loss, rel=1e-4)
    assert correction.info["stopped_by"] in ("loss", "budget")


def test_pga_stops_once_the_loss_reaches_a_uniform_guess(trained: tuple) -> None:
    model, data = trained
    settings = AscentSettings(epochs=50, batch_size=8, lr=0.05)

    correction = pga(model, split=split_of(data, 16), settings=settings, context=context())

    assert correction.info["stopped_by"] == "loss"
    assert correction.info["forget_loss"] >= stop_loss(3)
    assert correction.info["steps"] < 50 * 2  # stopped before the budget of 50 epochs of 2 batches


def test_pga_respects_max_steps_and_target_fa(trained: tuple) -> None:
    model, data = trained

    one = pga(
        model, split=split_of(data, 16), settings=AscentSettings(epochs=5, batch_size=8, max_steps=1), context=context()
    )
    none = pga(model, split=split_of(data, 16), settings=AscentSettings(target_fa=1.0), context=context())

    assert one.info["steps"] == 1
    assert none.info["steps"] == 0 and none.info["stopped_by"] == "target_fa"
    assert all(bool((d == 0).all()) for d in none.delta.values())


def test_empty_forget_set_gives_a_zero_correction(trained: tuple) -> None:
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}

    correction = pga(model, split=split_of(data, 0), settings=SETTINGS, context=context())

    assert all(bool((d == 0).all()) for d in correction.delta.values())
    after = add_scaled(model.state_dict(), correction.delta)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_pga_is_registered_reproducible_and_leaves_its_input_alone(trained: tuple) -> None:
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}

    first = get_method("pga")(model, split=split_of(data, 16), settings=SETTINGS, context=context(seed=4))
    second = get_method("pga")(model, split=split_of(data, 16), settings=SETTINGS, context=context(seed=4))

    assert "pga" in available_methods() and first.method == "pga"
    assert all(torch.equal(first.delta[k], second.delta[k]) for k in first.delta)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_pga_without_a_model_factory_says_what_it_needs(trained: tuple) -> None:
    model, data = trained

    with pytest.raises(UnlearningError, match="model_factory"):
        pga(model, split=split_of(data, 16), settings=SETTINGS, context=UnlearnContext(seed=0))
