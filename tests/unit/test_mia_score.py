"""Unit tests for the headline MIA score: membership AUC of LiRA's logit-scaled confidence."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics import (
    MembershipScore,
    logit_confidence,
    membership_auc,
    membership_score,
    membership_score_from_logits,
    predict_logits,
    spread_over_seeds,
)
from fedunlearn.metrics.mia import nonmember_positions

# ------------------------------------------------------------------------------ helpers


def normal(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) + shift).numpy()


def labelled(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, first_id: int) -> IndexedDataset:
    ids = torch.arange(first_id, first_id + len(labels), dtype=torch.int64)
    return IndexedDataset(inputs.float(), labels.to(torch.int64), ids, num_classes)


def identity_model(num_classes: int) -> nn.Linear:
    """Logits = inputs, computed exactly whatever the batch size."""
    model = nn.Linear(num_classes, num_classes)
    with torch.no_grad():
        model.weight.copy_(torch.eye(num_classes))
        model.bias.zero_()
    return model


def blobs(n: int, seed: int, first_id: int) -> IndexedDataset:
    """Four well-separated Gaussian classes in 8-D: a model generalises on them easily."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    centres = 3.0 * torch.eye(4, 8)
    return labelled(centres[labels] + torch.randn(n, 8, generator=g), labels, 4, first_id)


def flipped(ds: IndexedDataset, seed: int) -> IndexedDataset:
    """The same samples, each with a random wrong label."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, ds.num_classes, (len(ds),), generator=g)
    return labelled(ds.inputs, (ds.labels + shift) % ds.num_classes, ds.num_classes, int(ds.sample_ids[0]))


def fit(train: IndexedDataset, *, seed: int, steps: int = 150) -> nn.Module:
    """A small MLP trained full-batch with Adam: enough capacity to memorise a few wrong labels."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, train.num_classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(train.inputs), train.labels).backward()
        optimizer.step()
    return model


# ---------------------------------------------------------------------- membership_auc


def test_auc_of_identical_sets_is_one_half_and_of_same_distribution_near_it() -> None:
    # Prepare
    same = normal(200, seed=1)
    forget, nonmembers = normal(1500, seed=2), normal(3000, seed=3)
    # Execute
    identical = membership_auc(forget=same, nonmembers=same)
    alike = membership_auc(forget=forget, nonmembers=nonmembers)
    # Assert: exactly 1/2 by symmetry; within a few standard errors of 1/2 for two samples.
    assert identical.auc == pytest.approx(0.5, abs=1e-12)
    assert abs(alike.auc - 0.5) < 4 * alike.std_error and alike.std_error < 0.02
    assert (alike.n_forget, alike.n_nonmembers) == (1500, 3000)


def test_auc_is_one_when_forget_scores_all_exceed_and_zero_when_all_below() -> None:
    nonmembers = normal(50, seed=1)
    above = membership_auc(forget=nonmembers.max() + 1.0 + normal(20, seed=2) ** 2, nonmembers=nonmembers)
    below = membership_auc(forget=nonmembers.min() - 1.0 - normal(20, seed=3) ** 2, nonmembers=nonmembers)
    assert above.auc == 1.0 and below.auc == 0.0


def test_ties_count_one_half() -> None:
    # Pairs (forget, non-member): (2, 1) wins, (1, 1) ties -> (1 + 1/2) / 2.
    assert membership_auc(forget=[2.0, 1.0], nonmembers=[1.0]).auc == pytest.approx(0.75)
    assert membership_auc(forget=[3.0, 3.0, 3.0], nonmembers=[3.0, 3.0]).auc == pytest.approx(0.5)
    # 3 forget x 2 non-members: wins (5>4, 5>1, 4>1) = 3, ties (4=4) = 1, losses 2 -> 3.5 / 6.
    assert membership_auc(forget=[5.0, 4.0, 0.0], nonmembers=[4.0, 1.0]).auc == pytest.approx(3.5 / 6)


def test_empty_forget_set_is_nan_and_bad_nonmembers_raise() -> None:
    empty = membership_auc(forget=[], nonmembers=[0.1, 0.2])
    assert math.isnan(empty.auc) and math.isnan(empty.std_error) and empty.n_forget == 0
    assert empty.n_nonmembers == 2
    with pytest.raises(ValueError, match="non-members"):
        membership_auc(forget=[0.1], nonmembers=[])
    with pytest.raises(ValueError, match="finite"):
        membership_auc(forget=[math.inf], nonmembers=[0.0])


def test_std_error_agrees_with_bootstrap_and_shrinks_with_more_samples() -> None:
    # Prepare: shifted normals, AUC about 0.64.
    from sklearn.metrics import roc_auc_score

    forget, nonmembers = normal(150, seed=1, shift=0.5), normal(250, seed=2)
    truth = np.concatenate([np.ones(150), np.zeros(250)])
    rng = np.random.default_rng(0)
    # Execute
    boot = [
        roc_auc_score(truth, np.concatenate([rng.choice(forget, 150), rng.choice(nonmembers, 250)])) for _ in range(100)
    ]
    small = membership_auc(forget=forget, nonmembers=nonmembers)
    large = membership_auc(forget=normal(600, seed=3, shift=0.5), nonmembers=normal(1000, seed=4))
    # Assert
    assert small.std_error == pytest.approx(float(np.std(boot)), rel=0.25)
    assert large.std_error == pytest.approx(small.std_error / 2, rel=0.3)
    assert math.isnan(membership_auc(forget=[1.0], nonmembers=[0.0, 2.0]).std_error)


def test_membership_score_is_frozen_and_value_is_the_auc() -> None:
    score = membership_auc(forget=[2.0, 0.0], nonmembers=[1.0])
    assert isinstance(score, MembershipScore) and score.value == score.auc == pytest.approx(0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        score.auc = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------- logit_confidence


def test_logit_confidence_equals_log_odds_and_stays_finite_when_p_rounds_to_one() -> None:
    # Prepare
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 5, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 5, (30,), generator=g)
    p = torch.softmax(logits, dim=1).gather(1, labels.reshape(-1, 1)).squeeze(1)
    extreme = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, -200.0]])
    # Execute
    phi = logit_confidence(logits, labels)
    phi_extreme = logit_confidence(extreme, torch.tensor([0, 2]))
    # Assert: log(p / (1 - p)); for p_y == 1.0 in float: z_y - log(2), still finite and ordered.
    torch.testing.assert_close(phi, torch.log(p / (1 - p)), atol=1e-9, rtol=1e-9)
    assert phi_extreme.tolist() == pytest.approx([200.0 - math.log(2.0), -200.0 - math.log(2.0)])


def test_logit_confidence_ranks_samples_as_the_loss_does() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 4, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 4, (50,), generator=g)
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    assert torch.equal(torch.argsort(logit_confidence(logits, labels)), torch.argsort(-loss))


# ------------------------------------------------------------- sampling and determinism


def test_nonmember_positions_are_all_or_a_seeded_sorted_subset() -> None:
    assert np.array_equal(nonmember_positions(40, seed=3, max_nonmembers=None), np.arange(40))
    assert np.array_equal(nonmember_positions(40, seed=3, max_nonmembers=40), np.arange(40))
    first = nonmember_positions(500, seed=3, max_nonmembers=60)
    assert np.array_equal(first, nonmember_positions(500, seed=3, max_nonmembers=60))
    assert not np.array_equal(first, nonmember_positions(500, seed=4, max_nonmembers=60))
    assert len(np.unique(first)) == 60 and np.all(np.diff(first) > 0) and first.max() < 500
    with pytest.raises(ValueError, match="max_nonmembers"):
        nonmember_positions(10, seed=0, max_nonmembers=0)


def test_membership_score_is_deterministic_and_matches_the_logits_version() -> None:
    # Prepare: identity model, so the logits are the inputs whatever the batching.
    g = torch.Generator().manual_seed(5)
    forget = labelled(torch.randn(25, 3, generator=g) + 1.0, torch.randint(0, 3, (25,), generator=g), 3, 0)
    test = labelled(torch.randn(300, 3, generator=g), torch.randint(0, 3, (300,), generator=g), 3, 1000)
    model = identity_model(3)
    # Execute
    first = membership_score(model, forget=forget, nonmembers=test, seed=2, max_nonmembers=100, batch_size=7)
    again = membership_score(model, forget=forget, nonmembers=test, seed=2, max_nonmembers=100)
    other_seed = membership_score(model, forget=forget, nonmembers=test, seed=9, max_nonmembers=100)
    via_logits = membership_score_from_logits(
        forget_logits=predict_logits(model, forget),
        forget_labels=forget.labels,
        nonmember_logits=predict_logits(model, test),
        nonmember_labels=test.labels,
        seed=2,
        max_nonmembers=100,
    )
    # Assert
    assert first == again == via_logits and first.n_nonmembers == 100 and first.n_forget == 25
    assert other_seed.n_nonmembers == 100 and other_seed.auc != first.auc


def test_memorised_samples_score_above_unseen_and_above_the_model_never_trained_on_them() -> None:
    # Prepare: 20 training samples carry a wrong label ("none" memorises them); RT trains
    # without them. Non-members: unseen samples of the same kind (wrong labels too), and
    # unseen correctly labelled samples.
    clean = blobs(200, seed=1, first_id=0)
    memorised = flipped(blobs(20, seed=2, first_id=1000), seed=3)
    unseen_flipped = flipped(blobs(200, seed=4, first_id=2000), seed=5)
    unseen = blobs(200, seed=6, first_id=3000)
    train = labelled(torch.cat([clean.inputs, memorised.inputs]), torch.cat([clean.labels, memorised.labels]), 4, 0)
    none, rt = fit(train, seed=0), fit(clean, seed=0)
    # Execute
    score = {
        (name, kind): membership_score(model, forget=memorised, nonmembers=nonmembers, seed=0).auc
        for name, model in (("none", none), ("RT", rt))
        for kind, nonmembers in (("flipped", unseen_flipped), ("clean", unseen))
    }
    # Assert: "none" fits its wrong labels (the premise), so against unseen samples of the
    # same kind they look like members and RT's look like non-members. Against correctly
    # labelled non-members both are low (a wrong label is hard to fit), but the order holds.
    assert (predict_logits(none, memorised).argmax(dim=1) == memorised.labels).float().mean() > 0.8
    assert score["none", "flipped"] > 0.9
    assert abs(score["RT", "flipped"] - 0.5) < 0.25
    assert score["none", "clean"] > score["RT", "clean"] + 0.15


# ------------------------------------------------------------------------ seed spread


def test_spread_over_seeds_uses_sample_std_and_skips_nan() -> None:
    spread = spread_over_seeds([0.4, 0.6, math.nan, 0.5])
    assert spread.n == 3 and spread.mean == pytest.approx(0.5) and spread.std == pytest.approx(0.1)
    single = spread_over_seeds([0.7])
    assert single.mean == pytest.approx(0.7) and math.isnan(single.std)
    assert math.isnan(spread_over_seeds([]).mean)
