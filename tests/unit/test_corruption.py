"""Unit tests for label corruption (fedunlearn.data.corruption)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.data.backdoor import TriggerPattern, poison, select_poison_ids
from fedunlearn.data.corruption import changed_ids, mislabel, select_mislabel_ids, wrong_label_for
from fedunlearn.data.indexed import IndexedDataset

NUM_CLASSES = 10


def images(n: int, seed: int, num_classes: int = NUM_CLASSES) -> IndexedDataset:
    """Random 1x8x8 inputs, labels in [0, num_classes), ids 1000, 1003, ... (not positions)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return IndexedDataset(x, y, torch.arange(1000, 1000 + 3 * n, 3, dtype=torch.int64), num_classes)


@pytest.mark.parametrize(("n", "fraction", "expected"), [(200, 0.05, 10), (200, 0.1, 20), (7, 0.5, 4), (10, 0.0, 0)])
def test_select_count_is_rounded_fraction_sorted_unique_and_held(n: int, fraction: float, expected: int) -> None:
    ds = images(n, seed=0)
    ids = select_mislabel_ids(ds, fraction=fraction, seed=3)
    assert len(ids) == expected == int(round(fraction * n))
    assert ids.dtype == np.int64
    assert np.all(np.diff(ids) > 0)
    assert np.all(np.isin(ids, ds.ids()))


def test_mislabel_changes_exactly_the_selected_labels_to_wrong_ones() -> None:
    # Prepare
    ds = images(300, seed=1)
    # Execute
    bad = mislabel(ds, fraction=0.1, seed=5)
    chosen = select_mislabel_ids(ds, fraction=0.1, seed=5)
    # Assert: ids, order and inputs unchanged; labels differ exactly at the chosen ids.
    assert torch.equal(bad.sample_ids, ds.sample_ids)
    assert torch.equal(bad.inputs, ds.inputs)
    assert bad.num_classes == ds.num_classes
    differs = (bad.labels != ds.labels).numpy()
    assert sorted(ds.ids()[differs].tolist()) == chosen.tolist()
    assert int(bad.labels.min()) >= 0 and int(bad.labels.max()) < NUM_CLASSES
    assert np.array_equal(changed_ids(ds, bad), chosen)


def test_mislabel_never_keeps_the_true_label_even_with_two_classes() -> None:
    ds = images(100, seed=2, num_classes=2)
    bad = mislabel(ds, fraction=1.0, seed=0)
    assert torch.equal(bad.labels, 1 - ds.labels)


def test_mislabel_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    ds = images(500, seed=3)
    a, b = mislabel(ds, fraction=0.1, seed=11), mislabel(ds, fraction=0.1, seed=11)
    c = mislabel(ds, fraction=0.1, seed=12)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)


def test_wrong_labels_cover_every_other_class() -> None:
    ds = images(2000, seed=4)
    bad = mislabel(ds, fraction=1.0, seed=0)
    shift = (bad.labels - ds.labels) % NUM_CLASSES
    assert set(shift.tolist()) == set(range(1, NUM_CLASSES))  # uniform over the 9 wrong labels


def test_mislabel_leaves_the_input_dataset_untouched() -> None:
    ds = images(50, seed=5)
    labels, inputs = ds.labels.clone(), ds.inputs.clone()
    bad = mislabel(ds, fraction=0.5, seed=0)
    bad.labels[0] = 7
    assert torch.equal(ds.labels, labels) and torch.equal(ds.inputs, inputs)


def test_empty_dataset_and_zero_fraction() -> None:
    empty = IndexedDataset(
        torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 10
    )
    assert len(select_mislabel_ids(empty, fraction=0.5, seed=0)) == 0
    assert len(mislabel(empty, fraction=0.5, seed=0)) == 0
    ds = images(20, seed=6)
    assert torch.equal(mislabel(ds, fraction=0.0, seed=0).labels, ds.labels)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "a lot"])
def test_bad_fraction_is_a_value_error(fraction: object) -> None:
    with pytest.raises(ValueError, match="fraction"):
        mislabel(images(10, seed=0), fraction=fraction, seed=0)  # type: ignore[arg-type]


def test_one_class_or_out_of_range_labels_are_value_errors() -> None:
    one = IndexedDataset(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64), torch.arange(4), 1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        select_mislabel_ids(one, fraction=0.5, seed=0)
    bad = IndexedDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 3]), torch.arange(2), 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        mislabel(bad, fraction=0.5, seed=0)


def test_wrong_label_for_checks_shifts() -> None:
    assert wrong_label_for(torch.tensor([2, 2]), np.array([1, 2]), 3).tolist() == [0, 1]
    with pytest.raises(ValueError, match="shifts must lie"):
        wrong_label_for(torch.tensor([1]), torch.tensor([3]), 3)
    with pytest.raises(ValueError, match="one shift per label"):
        wrong_label_for(torch.tensor([1, 2]), torch.tensor([1]), 3)


def test_changed_ids_finds_backdoor_poisoned_samples() -> None:
    ds = images(100, seed=7)
    poisoned = poison(ds, fraction=0.1, target_label=0, pattern=TriggerPattern(size=2, value=5.0), seed=1)
    assert np.array_equal(changed_ids(ds, poisoned), select_poison_ids(ds, fraction=0.1, target_label=0, seed=1))


def test_changed_ids_rejects_unaligned_copies() -> None:
    ds = images(10, seed=8)
    with pytest.raises(ValueError, match="sample ids"):
        changed_ids(ds, ds.select(torch.arange(9, -1, -1)))
