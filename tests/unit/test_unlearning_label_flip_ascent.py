"""Label-flip, gradient ascent and their layer-wise partial versions."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from fedunlearn.config import MethodSettings
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.history import layer_keep_count
from fedunlearn.unlearning import (
    Correction,
    ForgetRetainSplit,
    UnlearnContext,
    apply_step,
    get_method,
    gradient_step,
    wrong_labels,
)
from fedunlearn.unlearning.common import derive_generator
from fedunlearn.unlearning.label_flip import relabel_wrong


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make_split(n_forget: int = 6, n_retain: int = 20) -> ForgetRetainSplit:
    g = torch.Generator().manual_seed(2)
    n = n_forget + n_retain
    data = IndexedDataset(torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n), 3)
    return ForgetRetainSplit(forget=data.select(torch.arange(n_forget)), retain=data.select(torch.arange(n_forget, n)))


def settings_for(name: str, **values: object) -> MethodSettings:
    """The settings of method ``name`` with ``values`` (keys another method's settings lack are
    left out, so a naive method and its partial version can share one set of values)."""
    settings_type = get_method(name).settings_type
    fields = {f.name for f in dataclasses.fields(settings_type)}
    return settings_type(**{k: v for k, v in values.items() if k in fields})


def unlearn(name: str, model: nn.Module, split: ForgetRetainSplit, config: dict, seed: int = 0) -> Correction:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings = settings_for(name, **config)
        return get_method(name)(model, split=split, settings=settings, context=UnlearnContext(seed=seed))


def forget_loss(model: nn.Module, data: IndexedDataset) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(data.inputs), data.labels))


def test_wrong_labels_are_never_the_true_label_and_cover_every_other_class() -> None:
    labels = torch.tensor([0, 1, 2, 3] * 50)

    flipped = wrong_labels(labels, 4, generator=torch.Generator().manual_seed(0))
    again = wrong_labels(labels, 4, generator=torch.Generator().manual_seed(0))

    assert bool((flipped != labels).all())
    assert torch.equal(flipped, again)
    for true_label in range(4):
        seen = set(flipped[labels == true_label].tolist())
        assert seen == set(range(4)) - {true_label}


def test_one_step_label_flip_is_minus_lr_times_the_gradient_on_the_flipped_batch() -> None:
    model, split = tiny_model(), make_split()
    config = dict(epochs=1, batch_size=64, lr=0.1)  # one batch holds all of D_f: one step
    flipped = relabel_wrong(split.forget, generator=derive_generator(0, "wrong-labels"))
    expected = gradient_step(
        tiny_model().eval(), flipped.inputs, flipped.labels, lr=0.1, ascent=False, what="t", step=0
    )

    correction = unlearn("label_flip", model, split, config)

    assert correction.cost.forward_backward == 1
    for name, value in expected.items():
        torch.testing.assert_close(correction.delta[name], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "naive, partial", [("label_flip", "partial_label_flip"), ("gradient_ascent", "partial_gradient_ascent")]
)
def test_partial_one_step_touches_only_its_layerwise_top_entries(naive: str, partial: str) -> None:
    model, split = tiny_model(), make_split()
    config = dict(epochs=1, batch_size=64, lr=0.1, select_ratio=0.2)

    full = unlearn(naive, model, split, config)
    part = unlearn(partial, model, split, config)

    for name, param in model.named_parameters():
        k = layer_keep_count(param.numel(), 0.2)
        top = set(torch.topk(full.delta[name].abs().reshape(-1), k).indices.tolist())
        touched = set(torch.nonzero(part.delta[name].reshape(-1)).reshape(-1).tolist())
        assert touched and touched <= top
        outside = torch.ones(param.numel(), dtype=torch.bool)
        outside[list(top)] = False
        assert bool((part.delta[name].reshape(-1)[outside] == 0).all())  # bit-identical outside
        inside = torch.tensor(sorted(top))
        torch.testing.assert_close(part.delta[name].reshape(-1)[inside], full.delta[name].reshape(-1)[inside])


def test_apply_step_with_random_selector_leaves_unselected_entries_bit_identical() -> None:
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) for n, p in model.named_parameters()}

    applied = apply_step(model, step, keep_ratio=0.3, selector="random", generator=torch.Generator().manual_seed(4))

    for name, param in model.named_parameters():
        selected = applied[name] != 0
        assert int(selected.sum()) == layer_keep_count(param.numel(), 0.3)
        assert torch.equal(param.detach()[~selected], before[name][~selected])
        assert torch.equal(param.detach()[selected], before[name][selected] + step[name][selected])


def test_partial_multi_step_runs_stay_within_the_union_of_per_step_selections() -> None:
    model, split = tiny_model(), make_split()
    config = dict(epochs=2, batch_size=2, lr=0.05, select_ratio=0.1)

    correction = unlearn("partial_label_flip", model, split, config)

    steps = correction.cost.forward_backward
    assert steps == 6
    for name, param in model.named_parameters():
        assert int((correction.delta[name] != 0).sum()) <= steps * layer_keep_count(param.numel(), 0.1)


def test_gradient_ascent_raises_the_forget_loss_and_label_flip_lowers_the_flipped_loss() -> None:
    model, split = tiny_model(), make_split()
    config = dict(epochs=3, batch_size=4, lr=0.05)

    ascent = unlearn("gradient_ascent", model, split, config)
    flip = unlearn("label_flip", model, split, config)

    ascended, flipped_model = tiny_model(), tiny_model()
    ascended.load_state_dict({k: v + ascent.delta[k] for k, v in model.state_dict().items()})
    flipped_model.load_state_dict({k: v + flip.delta[k] for k, v in model.state_dict().items()})
    flipped = relabel_wrong(split.forget, generator=derive_generator(0, "wrong-labels"))
    assert forget_loss(ascended, split.forget) > forget_loss(model, split.forget)
    assert forget_loss(flipped_model, flipped) < forget_loss(model, flipped)


def test_gradient_ascent_stops_before_any_step_when_fa_is_already_at_target() -> None:
    model, split = tiny_model(), make_split()

    correction = unlearn("gradient_ascent", model, split, dict(target_fa=1.0, epochs=5))

    assert correction.cost.forward_backward == 0
    assert correction.info["reached_target"] is True
    assert all(bool((d == 0).all()) for d in correction.delta.values())


def test_gradient_ascent_budget_is_max_steps_when_target_is_not_reached() -> None:
    model, split = tiny_model(), make_split()
    config = dict(target_fa=0.0, epochs=10, batch_size=2, max_steps=4, lr=1e-4)

    correction = unlearn("partial_gradient_ascent", model, split, config)

    assert correction.cost.forward_backward == 4
    assert correction.cost.extra["fa_checks"] == 3  # before epochs 1 and 2, and at the end
    assert correction.info["reached_target"] is False


def test_partial_methods_warn_when_nothing_is_pruned() -> None:
    model, split = tiny_model(), make_split()

    with pytest.warns(UserWarning, match="select_ratio=1.0"):
        get_method("partial_gradient_ascent")(
            model,
            split=split,
            settings=settings_for("partial_gradient_ascent", select_ratio=1.0, epochs=1),
            context=UnlearnContext(),
        )


def test_different_seeds_draw_different_wrong_labels() -> None:
    model, split = tiny_model(), make_split(n_forget=12)
    config = dict(epochs=1, batch_size=64, lr=0.1)

    a, b = unlearn("label_flip", model, split, config, seed=0), unlearn("label_flip", model, split, config, seed=1)

    assert any(not torch.equal(a.delta[k], b.delta[k]) for k in a.delta)
