"""Unit tests for fedunlearn.metrics: accuracy, SVC MIA-efficacy, KL, Avg.D, evaluate_unlearning.

The headline MIA score has its own file (test_mia_score.py). No assertion here relies on
floats being bit-equal across batch sizes, BLAS builds or thread counts: comparisons between
differently batched forward passes use tolerances, and where an exact comparison is the
point (a discontinuous attack fed the same logits two ways) the model's arithmetic is exact
(``exact_model`` on ``dyadic`` inputs: every product and partial sum is representable).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.data.backdoor import TriggerPattern
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics import (
    BackdoorSpec,
    EvalResult,
    MIAResult,
    UnlearningMetrics,
    accuracy,
    attack_success_rate,
    average_gap,
    evaluate_loss_accuracy,
    evaluate_unlearning,
    kl_divergence,
    kl_to_reference,
    membership_score,
    mia_efficacy,
    mia_from_probabilities,
    mia_svc,
    predict_logits,
)
from fedunlearn.metrics.accuracy import accuracy_from_logits
from fedunlearn.metrics.mia import (
    confidence_feature,
    entropy_feature,
    modified_entropy_feature,
    probabilities,
    shadow_positions,
)

# ------------------------------------------------------------------------------ helpers


def identity_model(num_classes: int) -> nn.Linear:
    """A linear model whose logits are its inputs (hand-made logits in, same logits out)."""
    model = nn.Linear(num_classes, num_classes)
    with torch.no_grad():
        model.weight.copy_(torch.eye(num_classes))
        model.bias.zero_()
    return model


def exact_model(in_features: int, num_classes: int, seed: int) -> nn.Sequential:
    """Flatten + Linear with weights in {-1, 0, 1} and zero bias.

    On ``dyadic`` inputs every product and partial sum is exactly representable in float32,
    so its logits do not depend on batch size, summation order or thread count.
    """
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randint(-1, 2, (num_classes, in_features), generator=g).float())
        linear.bias.zero_()
    return nn.Sequential(nn.Flatten(), linear)


def dyadic(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random inputs on the grid k / 8 with |k| <= 32 (exact float32 arithmetic for ``exact_model``)."""
    return torch.randint(-32, 33, shape, generator=generator).float() / 8.0


def dataset(
    inputs: torch.Tensor, labels: list[int] | torch.Tensor, num_classes: int, first_id: int = 0
) -> IndexedDataset:
    y = torch.as_tensor(labels, dtype=torch.int64)
    ids = torch.arange(first_id, first_id + len(y), dtype=torch.int64)
    return IndexedDataset(inputs.float(), y, ids, num_classes)


def random_dataset(n: int, features: int, classes: int, seed: int, first_id: int = 0) -> IndexedDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return dataset(x, y, classes, first_id)


def probs_with_confidence(conf: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows with p_y = conf and the rest spread evenly over the other classes."""
    rest = ((1.0 - conf) / (num_classes - 1)).unsqueeze(1).expand(-1, num_classes).clone()
    return rest.scatter(1, labels.unsqueeze(1), conf.unsqueeze(1)).double()


def synthetic_split(n: int, low: float, high: float, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    conf = low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)
    return probs_with_confidence(conf, labels, classes), labels


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_on_hand_made_logits() -> None:
    # Prepare: argmax per row is 0, 1, 2, 0; labels make rows 0, 1, 2 correct and row 3 wrong.
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.5, 4.0], [5.0, 0.0, 1.0]])
    ds = dataset(logits, [0, 1, 2, 2], 3)
    # Execute
    acc = accuracy(identity_model(3), ds, batch_size=3)
    # Assert
    assert acc == pytest.approx(0.75)
    assert accuracy_from_logits(logits, torch.tensor([1, 0, 0, 0])) == pytest.approx(0.25)


def test_accuracy_of_empty_dataset_is_nan() -> None:
    empty = dataset(torch.zeros(0, 3), [], 3)
    assert math.isnan(accuracy(identity_model(3), empty))
    result = evaluate_loss_accuracy(identity_model(3), empty)
    assert result.num_examples == 0 and math.isnan(result.loss) and math.isnan(result.accuracy)
    assert predict_logits(identity_model(3), empty).shape == (0, 3)


def test_evaluate_loss_accuracy_hand_computed() -> None:
    # Row 0: logits (0, ln 3), label 0 -> p_0 = 1/4, wrong. Row 1: (ln 3, 0), label 0 -> p_0 = 3/4, right.
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    result = evaluate_loss_accuracy(identity_model(2), dataset(logits, [0, 0], 2))
    assert result.loss == pytest.approx((math.log(4.0) + math.log(4.0 / 3.0)) / 2)
    assert result.accuracy == pytest.approx(0.5)
    assert result.num_examples == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.loss = 0.0  # type: ignore[misc]
    assert isinstance(result, EvalResult)


def test_predict_logits_uses_eval_mode_and_restores_modes() -> None:
    # Prepare: dropout would make train-mode outputs random; one submodule is left in eval mode.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    ds = random_dataset(32, 4, 3, seed=1)
    # Execute
    first = predict_logits(model, ds, batch_size=7)
    second = predict_logits(model, ds, batch_size=32)
    # Assert: deterministic (dropout off), in order, and every module's flag is as before.
    # Batches of 7 and 32 may round differently (BLAS kernels, threads): compare with a
    # tolerance; dropout at p=0.5 would change the logits by far more than 1e-4.
    torch.testing.assert_close(first, second, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(first, nn.Sequential(model[0], model[2])(ds.inputs).detach(), atol=1e-4, rtol=1e-4)
    assert [m.training for m in model] == [True, True, False] and model.training
    model.eval()
    predict_logits(model, ds)
    assert not any(m.training for m in model.modules())


def test_predict_logits_rejects_device_the_model_is_not_on() -> None:
    with pytest.raises(ValueError, match="move the model"):
        predict_logits(identity_model(3), dataset(torch.zeros(2, 3), [0, 1], 3), device="meta")


# ---------------------------------------------------------------------------- divergence


def test_kl_of_identical_and_shifted_logits_is_zero() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 5, generator=g) * 10
    assert kl_to_reference(logits, logits) == pytest.approx(0.0, abs=1e-12)
    assert kl_to_reference(logits, logits + 7.0) == pytest.approx(0.0, abs=1e-12)


def test_kl_two_classes_hand_computed_and_ordered() -> None:
    # p_RT = (1/2, 1/2), p_model = (4/5, 1/5).
    p_ref = torch.tensor([[0.0, 0.0]])
    q = torch.tensor([[math.log(4.0), 0.0]])
    # KL(p || q) = 1/2 ln(0.5/0.8) + 1/2 ln(0.5/0.2) = ln(1.25)
    assert kl_to_reference(p_ref, q) == pytest.approx(math.log(1.25))
    # Swapped: KL(q || p) = 0.8 ln 1.6 + 0.2 ln 0.4, a different number: the order matters.
    assert kl_to_reference(q, p_ref) == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4))
    # Mean over samples: a second identical row leaves the mean unchanged, a zero row halves it.
    assert kl_to_reference(torch.cat([p_ref, p_ref]), torch.cat([q, p_ref])) == pytest.approx(math.log(1.25) / 2)


def test_kl_is_finite_for_extreme_logits_and_checks_shapes() -> None:
    p_ref = torch.tensor([[1000.0, -1000.0, 0.0]])
    q = torch.tensor([[-1000.0, 1000.0, 0.0]])
    value = kl_to_reference(p_ref, q)
    assert math.isfinite(value) and value == pytest.approx(2000.0)
    assert math.isnan(kl_to_reference(torch.zeros(0, 3), torch.zeros(0, 3)))
    with pytest.raises(ValueError, match="same shape"):
        kl_to_reference(torch.zeros(2, 3), torch.zeros(3, 3))


def test_kl_divergence_between_models() -> None:
    ds = random_dataset(16, 3, 3, seed=2)
    shifted = identity_model(3)
    with torch.no_grad():
        shifted.bias.fill_(2.0)  # adds the same constant to every logit: same softmax
    assert kl_divergence(identity_model(3), shifted, ds) == pytest.approx(0.0, abs=1e-9)
    scaled = identity_model(3)
    with torch.no_grad():
        scaled.weight.mul_(3.0)
    expected = kl_to_reference(ds.inputs, 3.0 * ds.inputs)
    assert kl_divergence(identity_model(3), scaled, ds) == pytest.approx(expected) and expected > 0


def test_average_gap_hand_computed() -> None:
    model = {"FA": 0.90, "RA": 0.95, "TA": 0.90, "MIA": 0.10}
    rt = {"FA": 0.80, "RA": 0.97, "TA": 0.88, "MIA": 0.20}
    # gaps in points: 10, 2, 2, 10 -> mean 6
    assert average_gap(model, rt) == pytest.approx(6.0)
    assert average_gap(model, rt, keys=("RA", "TA")) == pytest.approx(2.0)
    assert average_gap(rt, model) == pytest.approx(6.0)


def test_average_gap_reports_missing_keys() -> None:
    with pytest.raises(ValueError, match="MIA"):
        average_gap({"FA": 0.1, "RA": 0.1, "TA": 0.1}, {"FA": 0.1, "RA": 0.1, "TA": 0.1, "MIA": 0.1})
    with pytest.raises(ValueError, match="at least one key"):
        average_gap({}, {}, keys=())


# ---------------------------------------------------------------------------------- MIA


def test_features_hand_computed() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    expected_mentr = [
        -0.3 * math.log(0.7) - 0.2 * math.log(0.8) - 0.1 * math.log(0.9),
        -0.8 * math.log(0.2) - 0.7 * math.log(0.3) - 0.1 * math.log(0.9),
        0.0,  # a one-hot correct prediction
    ]
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert modified_entropy_feature(p, y).tolist() == pytest.approx(expected_mentr, abs=1e-12)
    assert entropy_feature(p).tolist() == pytest.approx([entropy, entropy, 0.0], abs=1e-12)
    assert confidence_feature(p, y).tolist() == pytest.approx([0.7, 0.2, 1.0])


def test_mia_svc_forget_like_test_is_near_one_and_like_retain_near_zero() -> None:
    # Prepare: members are confident (p_y in [0.9, 1]), non-members are not (p_y in [0.3, 0.7]).
    p_r, y_r = synthetic_split(150, 0.9, 1.0, seed=1)
    p_t, y_t = synthetic_split(100, 0.3, 0.7, seed=2)
    p_unlearned, y_unlearned = synthetic_split(60, 0.3, 0.7, seed=3)
    p_remembered, y_remembered = synthetic_split(60, 0.9, 1.0, seed=4)
    # Execute
    forgotten = mia_from_probabilities(p_unlearned, y_unlearned, p_r, y_r, p_t, y_t, seed=0, max_shadow=None)
    remembered = mia_from_probabilities(p_remembered, y_remembered, p_r, y_r, p_t, y_t, seed=0, max_shadow=None)
    # Assert: all three attacks agree; value is the confidence attack.
    for result in (forgotten, remembered):
        assert isinstance(result, MIAResult) and result.value == result.confidence
    assert min(forgotten.confidence, forgotten.entropy, forgotten.modified_entropy) > 0.95
    assert max(remembered.confidence, remembered.entropy, remembered.modified_entropy) < 0.05
    assert forgotten.num_shadow_members == forgotten.num_shadow_non_members == 100


def test_mia_empty_forget_set_is_nan_and_empty_test_raises() -> None:
    p_r, y_r = synthetic_split(20, 0.9, 1.0, seed=1)
    p_t, y_t = synthetic_split(20, 0.3, 0.7, seed=2)
    empty = mia_from_probabilities(
        torch.zeros(0, 10), torch.zeros(0, dtype=torch.int64), p_r, y_r, p_t, y_t, seed=0, max_shadow=None
    )
    assert math.isnan(empty.value) and math.isnan(empty.entropy) and empty.num_forget == 0
    with pytest.raises(ValueError, match="non-empty retain set and test set"):
        mia_from_probabilities(p_r, y_r, p_r, y_r, p_t[:0], y_t[:0], seed=0, max_shadow=None)


def test_shadow_positions_are_seeded_balanced_and_capped() -> None:
    r1, t1 = shadow_positions(500, 300, seed=3, max_shadow=50)
    r2, t2 = shadow_positions(500, 300, seed=3, max_shadow=50)
    r3, _ = shadow_positions(500, 300, seed=4, max_shadow=50)
    assert np.array_equal(r1, r2) and np.array_equal(t1, t2) and not np.array_equal(r1, r3)
    assert len(r1) == len(t1) == 50 and len(np.unique(r1)) == 50 and r1.max() < 500 and t1.max() < 300
    r_all, t_all = shadow_positions(500, 300, seed=0, max_shadow=None)
    assert len(r_all) == 300 and np.array_equal(t_all, np.arange(300))
    r_small, t_small = shadow_positions(40, 300, seed=0, max_shadow=None)  # D_r smaller than test
    assert len(r_small) == len(t_small) == 40
    with pytest.raises(ValueError, match="max_shadow"):
        shadow_positions(10, 10, seed=0, max_shadow=0)


def test_mia_svc_of_model_equals_probability_version() -> None:
    # Prepare: exact arithmetic, so scoring subsets or whole sets gives the same logits.
    model = exact_model(5, 4, seed=0)
    g = torch.Generator().manual_seed(1)
    forget, retain, test = (
        dataset(dyadic((n, 5), g), torch.randint(0, 4, (n,), generator=g), 4, first_id)
        for n, first_id in ((30, 0), (120, 100), (80, 1000))
    )
    # Execute
    via_model = mia_svc(model, forget=forget, retain=retain, test=test, seed=5, max_shadow=60)
    assert mia_efficacy(model, forget=forget, retain=retain, test=test, seed=5, max_shadow=60) == via_model
    probs = [probabilities(predict_logits(model, ds)) for ds in (forget, retain, test)]
    via_probs = mia_from_probabilities(
        probs[0], forget.labels, probs[1], retain.labels, probs[2], test.labels, seed=5, max_shadow=60
    )
    assert via_model == via_probs
    assert via_model.num_shadow_members == 60 and 0.0 <= via_model.value <= 1.0


# ------------------------------------------------------------------------ evaluate_unlearning


def test_evaluate_unlearning_matches_individual_metrics() -> None:
    # Prepare: exact arithmetic (see exact_model), so the metrics computed from shared logits
    # and the standalone functions see bit-equal logits on any machine.
    model = exact_model(16, 3, seed=0)
    g = torch.Generator().manual_seed(7)

    def images(n: int, first_id: int) -> IndexedDataset:
        return dataset(dyadic((n, 1, 4, 4), g), torch.randint(0, 3, (n,), generator=g), 3, first_id)

    forget, retain, test = images(20, 0), images(90, 100), images(60, 1000)
    spec = BackdoorSpec(target_label=1, pattern=TriggerPattern(size=2, value=3.0))
    # Execute
    metrics = evaluate_unlearning(
        model,
        forget=forget,
        retain=retain,
        test=test,
        reference_model=model,
        backdoor=spec,
        seed=3,
        max_nonmembers=50,
        max_shadow=40,
        max_retain_eval=None,
    )
    # Assert
    score = membership_score(model, forget=forget, nonmembers=test, seed=3, max_nonmembers=50)
    svc = mia_svc(model, forget=forget, retain=retain, test=test, seed=3, max_shadow=40)
    assert metrics.FA == accuracy(model, forget) and metrics.RA == accuracy(model, retain)
    assert metrics.TA == accuracy(model, test)
    assert (metrics.MIA, metrics.mia_std_error) == (score.auc, score.std_error) and 0.0 <= metrics.MIA <= 1.0
    assert (metrics.mia_svc, metrics.mia_svc_entropy, metrics.mia_svc_modified_entropy) == (
        svc.confidence,
        svc.entropy,
        svc.modified_entropy,
    )
    assert metrics.kl_rt_forget == pytest.approx(0.0, abs=1e-12) and metrics.kl_rt_test == pytest.approx(0.0, abs=1e-12)
    assert metrics.backdoor_asr == attack_success_rate(model, test, target_label=1, pattern=spec.pattern)
    assert set(metrics.to_dict()) == {f.name for f in dataclasses.fields(UnlearningMetrics)}
    assert metrics.average_gap_to(metrics) == 0.0


def test_evaluate_unlearning_without_svc_leaves_extras_empty_and_mia_unchanged() -> None:
    model = identity_model(3)
    forget, retain, test = (random_dataset(n, 3, 3, seed=s, first_id=100 * s) for n, s in ((10, 1), (50, 2), (30, 3)))
    with_svc = evaluate_unlearning(model, forget=forget, retain=retain, test=test)
    without = evaluate_unlearning(model, forget=forget, retain=retain, test=test, svc=False)
    assert without.mia_svc is None and without.mia_svc_entropy is None and without.mia_svc_modified_entropy is None
    assert with_svc.mia_svc is not None and 0.0 <= with_svc.mia_svc <= 1.0
    assert (without.MIA, without.mia_std_error) == (with_svc.MIA, with_svc.mia_std_error)


def test_evaluate_unlearning_measures_mia_against_given_nonmembers() -> None:
    # Prepare: the forget set looks like the extra non-members and unlike the test set.
    model = identity_model(3)
    g = torch.Generator().manual_seed(4)
    labels = torch.zeros(40, dtype=torch.int64)
    forget = dataset(torch.randn(40, 3, generator=g), labels, 3, first_id=0)
    retain = random_dataset(50, 3, 3, seed=2, first_id=100)
    test = dataset(torch.randn(40, 3, generator=g) + torch.tensor([4.0, 0.0, 0.0]), labels, 3, first_id=1000)
    alike = dataset(torch.randn(60, 3, generator=g), torch.zeros(60, dtype=torch.int64), 3, first_id=2000)
    # Execute
    default = evaluate_unlearning(model, forget=forget, retain=retain, test=test, svc=False)
    matched = evaluate_unlearning(model, forget=forget, retain=retain, test=test, nonmembers=alike, svc=False)
    # Assert: the MIA follows the non-member set; TA still comes from the test set.
    assert matched.MIA == membership_score(model, forget=forget, nonmembers=alike).auc
    assert default.MIA < 0.1 < matched.MIA
    assert matched.TA == default.TA


def test_evaluate_unlearning_empty_forget_set_gives_nan_mia() -> None:
    model = identity_model(3)
    retain, test = random_dataset(40, 3, 3, seed=2, first_id=100), random_dataset(30, 3, 3, seed=3, first_id=1000)
    metrics = evaluate_unlearning(model, forget=retain.select(np.arange(0)), retain=retain, test=test)
    assert math.isnan(metrics.FA) and math.isnan(metrics.MIA)
    assert metrics.mia_std_error is not None and math.isnan(metrics.mia_std_error)
    assert metrics.mia_svc is not None and math.isnan(metrics.mia_svc)
    assert not math.isnan(metrics.TA)


def test_evaluate_unlearning_optional_fields_and_retain_cap() -> None:
    model = identity_model(3)
    forget, retain, test = (random_dataset(n, 3, 3, seed=s, first_id=100 * s) for n, s in ((10, 1), (50, 2), (30, 3)))
    metrics = evaluate_unlearning(model, forget=forget, retain=retain, test=test, max_retain_eval=20)
    assert metrics.kl_rt_forget is None and metrics.kl_rt_test is None and metrics.backdoor_asr is None
    # RA on 20 of 50 samples: a multiple of 1/20, and reproducible with the same seed.
    assert round(metrics.RA * 20, 9).is_integer()
    assert metrics == evaluate_unlearning(model, forget=forget, retain=retain, test=test, max_retain_eval=20)
    with pytest.raises(ValueError, match="max_retain_eval"):
        evaluate_unlearning(model, forget=forget, retain=retain, test=test, max_retain_eval=0)
