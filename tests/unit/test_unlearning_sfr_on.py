"""SFR-on pieces: adaptive weights, Fisher and masks, fast-step identity, remain steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnknownNameError, UnlearningError
from fedunlearn.unlearning import (
    ForgetRetainSplit,
    SFROnSession,
    UnlearnContext,
    adaptive_forget_loss,
    adaptive_weights,
    cosine_factor,
    diagonal_fisher,
    get_method,
    remain_steps,
    saliency_mask,
    salun_topk_mask,
)
from fedunlearn.unlearning.sfr_on import SFROnSettings


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make_split(n_forget: int = 8, n_retain: int = 24) -> ForgetRetainSplit:
    g = torch.Generator().manual_seed(5)
    n = n_forget + n_retain
    data = IndexedDataset(torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n), 3)
    return ForgetRetainSplit(forget=data.select(torch.arange(n_forget)), retain=data.select(torch.arange(n_forget, n)))


# ------------------------------------------------------------------ adaptive loss


def test_adaptive_weights_are_the_softmax_of_minus_lambda_log_loss() -> None:
    losses = torch.tensor([0.5, 1.0, 2.0, 4.0])

    weights = adaptive_weights(losses, 0.5)

    by_hand = torch.tensor([2**0.5, 1.0, 2**-0.5, 0.5]) / (2**0.5 + 1.0 + 2**-0.5 + 0.5)
    torch.testing.assert_close(weights, by_hand)
    torch.testing.assert_close(weights, torch.softmax(-0.5 * torch.log(losses), dim=0))
    torch.testing.assert_close(adaptive_weights(losses, 1e-12), torch.full((4,), 0.25))
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6)


def test_adaptive_weights_survive_a_zero_loss() -> None:
    weights = adaptive_weights(torch.tensor([0.0, 1.0]), 0.5)

    assert bool(torch.isfinite(weights).all())
    assert float(weights[0]) > 0.99


def test_adaptive_forget_loss_treats_the_weights_as_constants() -> None:
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])

    loss = adaptive_forget_loss(logits, labels, temperature=0.5, coefficient=3.0)
    (grad,) = torch.autograd.grad(loss, logits)

    per = nn.functional.cross_entropy(logits, labels, reduction="none")
    w = torch.softmax(-0.5 * torch.log(per.detach()), dim=0)
    expected_loss = -3.0 * (w * per).sum()
    (expected_grad,) = torch.autograd.grad(expected_loss, logits)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


def test_cosine_schedule_starts_at_one_and_halves_midway() -> None:
    assert cosine_factor(0, 10) == 1.0
    assert math.isclose(cosine_factor(5, 10), 0.5)
    assert cosine_factor(10, 10) < 1e-12


# ------------------------------------------------------------------ Fisher and masks


def test_fisher_ratio_mask_on_a_hand_made_case() -> None:
    forget = {"w": torch.tensor([[2.0, 1.0], [0.0, 1e-20]]), "b": torch.tensor([3.0, 0.5])}
    remain = {"w": torch.tensor([[1.0, 2.0], [0.0, 0.0]]), "b": torch.tensor([1.0, 1.0])}

    mask = saliency_mask(forget, remain)
    strict = saliency_mask(forget, remain, gamma=2.0)

    assert mask["w"].tolist() == [[True, False], [True, True]]  # 0/0 -> eps/eps = 1 >= 1
    assert mask["b"].tolist() == [True, False]
    assert strict["w"].tolist() == [[True, False], [False, False]]  # 1 < 2 and (1e-20 + 1e-15) / 1e-15 < 2
    assert strict["b"].tolist() == [True, False]


def test_fisher_mask_rejects_a_remain_fisher_of_another_model() -> None:
    with pytest.raises(UnlearningError, match="does not match"):
        saliency_mask({"w": torch.ones(2)}, {"w": torch.ones(3)})


def test_diagonal_fisher_is_the_mean_of_squared_batch_gradients() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    data = IndexedDataset(x, y, torch.arange(3), 2)
    model.train()

    fisher = diagonal_fisher(model, data, batch_size=2, shuffle_seed=None)

    def batch_grad(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:  # mean_i (p_i - e_yi) x_i^T
        p = torch.softmax(xb @ model.weight.detach().T, dim=1)
        return (p - nn.functional.one_hot(yb, 2).float()).T @ xb / len(yb)

    expected = (batch_grad(x[:2], y[:2]) ** 2 + batch_grad(x[2:], y[2:]) ** 2) / 2
    torch.testing.assert_close(fisher["weight"], expected)
    assert model.training and model.weight.grad is None


def test_salun_topk_keeps_the_global_top_half_of_forget_gradients() -> None:
    model, split = tiny_model(), make_split()

    mask = salun_topk_mask(model, split.forget, batch_size=4, shuffle_seed=None)

    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == total // 2
    grads = torch.autograd.grad(
        -nn.functional.cross_entropy(model.eval()(split.forget.inputs[:4]), split.forget.labels[:4])
        - nn.functional.cross_entropy(model(split.forget.inputs[4:]), split.forget.labels[4:]),
        list(model.parameters()),
    )
    flat_grad = torch.cat([g.abs().reshape(-1) for g in grads])
    flat_mask = torch.cat([m.reshape(-1) for m in mask.values()])
    assert float(flat_grad[flat_mask].min()) >= float(flat_grad[~flat_mask].max()) - 1e-7


# ------------------------------------------------------------------ the method and its session


def test_fast_steps_only_equal_manual_masked_adaptive_ascent() -> None:
    model, split = tiny_model(), make_split()
    settings = SFROnSettings(
        iters=4,
        forget_freq=1,
        batch_size=64,
        momentum=0.0,
        weight_decay=0.0,
        lr=0.05,
        forget_scale=2.0,
        temperature=0.5,
        clip_norm=0.5,
    )
    mask = saliency_mask(
        diagonal_fisher(model, split.forget, batch_size=64), diagonal_fisher(model, split.retain, batch_size=64)
    )

    session = SFROnSession(model, forget=split.forget, retain=split.retain, mask=mask, settings=settings, seed=0)
    session.run(remain=False)

    manual = tiny_model()
    for t in range(4):
        manual.train()
        loss = adaptive_forget_loss(
            manual(split.forget.inputs), split.forget.labels, temperature=0.5, coefficient=2.0 * cosine_factor(t, 4)
        )
        grads = torch.autograd.grad(loss, list(manual.parameters()))
        masked = [g * mask[n] for (n, _), g in zip(manual.named_parameters(), grads, strict=True)]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in masked]))
        scale = min(1.0, 0.5 / (float(norm) + 1e-6))
        with torch.no_grad():
            for p, g in zip(manual.parameters(), masked, strict=True):
                p.sub_(0.05 * cosine_factor(t, 4) * scale * g)
    assert session.forget_steps == 4 and session.remain_steps == 0
    delta = session.delta()
    for name, value in manual.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name] + delta[name], value, rtol=1e-5, atol=1e-6)
        assert bool((delta[name][~mask[name]] == 0).all())  # no momentum, no decay: outside M untouched


def test_sfr_on_counts_fisher_passes_and_steps_in_its_cost() -> None:
    model, split = tiny_model(), make_split()
    settings = SFROnSettings(iters=6, forget_freq=2, batch_size=8)

    correction = get_method("sfr_on")(model, split=split, settings=settings, context=UnlearnContext(seed=1))

    extra = correction.cost.extra
    assert (extra["forget_steps"], extra["remain_steps"]) == (3, 6)
    assert (extra["fisher_forget_batches"], extra["fisher_remain_batches"]) == (1, 3)
    assert correction.cost.forward_backward == 3 + 6 + 1 + 3
    assert 0.0 < extra["mask_fraction"] < 1.0 and extra["fisher_seconds"] >= 0.0


def test_sfr_on_uses_the_given_remain_fisher_instead_of_computing_it() -> None:
    model, split = tiny_model(), make_split()
    settings = SFROnSettings(iters=2, batch_size=8)
    forget_fisher = diagonal_fisher(model, split.forget, batch_size=8, shuffle_seed=0)
    given = {n: torch.full_like(f, float(f.median())) for n, f in forget_fisher.items()}

    correction = get_method("sfr_on")(
        model, split=split, settings=settings, context=UnlearnContext(remain_fisher=given)
    )

    expected = saliency_mask(forget_fisher, given)
    fraction = sum(int(m.sum()) for m in expected.values()) / sum(m.numel() for m in expected.values())
    assert correction.cost.extra["fisher_remain_batches"] == 0
    assert math.isclose(correction.cost.extra["mask_fraction"], fraction)


@pytest.mark.parametrize("rule, fraction", [("none", 1.0), ("salun_topk", 0.5)])
def test_other_saliency_rules(rule: str, fraction: float) -> None:
    model, split = tiny_model(), make_split()

    correction = get_method("sfr_on")(
        model, split=split, settings=SFROnSettings(iters=2, saliency=rule), context=UnlearnContext()
    )

    assert math.isclose(correction.cost.extra["mask_fraction"], fraction, abs_tol=0.01)


def test_unknown_saliency_rule_lists_the_rules() -> None:
    with pytest.raises(UnknownNameError, match="fisher, none, salun_topk"):
        get_method("sfr_on")(
            tiny_model(), split=make_split(), settings=SFROnSettings(saliency="magic"), context=UnlearnContext()
        )


def test_session_rejects_iterations_outside_the_schedule() -> None:
    model, split = tiny_model(), make_split()
    session = SFROnSession(model, forget=split.forget, retain=None, mask=None, settings=SFROnSettings(iters=3), seed=0)

    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        session.forget_step(3)
    with pytest.raises(UnlearningError, match="D_r is empty"):
        session.remain_step(0)


# ------------------------------------------------------------------ remain steps


def test_remain_steps_equal_manual_gradient_descent_and_leave_the_model_alone() -> None:
    model, split = tiny_model(), make_split()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    delta = remain_steps(model, split.retain, steps=3, lr=0.1, batch_size=64, seed=0)

    manual = tiny_model()
    optimizer = torch.optim.SGD(manual.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(manual(split.retain.inputs), split.retain.labels).backward()
        optimizer.step()
    for name, value in manual.state_dict().items():
        torch.testing.assert_close(before[name] + delta[name], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(model.state_dict()[name], before[name])


def test_remain_steps_zero_steps_and_empty_data() -> None:
    model, split = tiny_model(), make_split()

    zero = remain_steps(model, split.retain, steps=0, lr=0.1, batch_size=8, seed=0)

    assert all(bool((d == 0).all()) for d in zero.values())
    with pytest.raises(UnlearningError, match="D_r is empty"):
        remain_steps(
            model,
            split.retain.select(torch.zeros(len(split.retain), dtype=torch.bool)),
            steps=2,
            lr=0.1,
            batch_size=8,
            seed=0,
        )


def test_coasting_carries_the_forget_steps_momentum_as_the_official_loop_would() -> None:
    # One forget step at t=0, then a zero-gradient step in every iteration (where the official
    # loop's remain step would be, t=0 included): SGD with momentum keeps moving the weights
    # along the forget step's direction, the k-th step by lr_t * momentum^k (no weight decay).
    model, split = tiny_model(), make_split()
    settings = SFROnSettings(iters=5, forget_freq=5, batch_size=64, momentum=0.9, weight_decay=0.0, clip_norm=100.0)

    alone = SFROnSession(model, forget=split.forget, retain=None, mask=None, settings=settings, seed=0)
    for t in range(5):
        alone.iteration(t, remain=False)
    carried = SFROnSession(model, forget=split.forget, retain=None, mask=None, settings=settings, seed=0)
    for t in range(5):
        carried.iteration(t, remain=False, coast=True)

    factor = 1 + sum(cosine_factor(t, 5) * 0.9 ** (t + 1) for t in range(5))
    assert alone.forget_steps == carried.forget_steps == 1
    for name, step in alone.delta().items():
        torch.testing.assert_close(carried.delta()[name], factor * step, rtol=1e-4, atol=1e-7)
    assert factor > 3  # the carry is most of the forget step's effect
