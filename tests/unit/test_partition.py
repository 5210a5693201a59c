"""Client partitions: deterministic per seed, disjoint, complete, shaped as each kind promises."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.config import DataConfig
from fedunlearn.data import Partition, make_partition
from fedunlearn.errors import ConfigError

KINDS = ("iid", "dirichlet", "by_class")
NUM_CLASSES = 10


def _dataset(n: int = 1000, *, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ids that are not positions (offset, shuffled) and balanced labels 0..9 in a scrambled order."""
    rng = np.random.default_rng(123)
    ids = rng.permutation(np.arange(offset, offset + n)).astype(np.int64)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES)
    return ids, labels


def _label_tv_from_uniform(part: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> float:
    """Total-variation distance between a client's label distribution and the uniform one."""
    label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))
    counts = np.bincount([label_of[i] for i in part.tolist()], minlength=NUM_CLASSES)
    return 0.5 * float(np.abs(counts / counts.sum() - 1.0 / NUM_CLASSES).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_identical_partition(kind: str) -> None:
    # Prepare
    ids, labels = _dataset()
    config = DataConfig(num_clients=5, partition=kind)

    # Execute
    first = make_partition(ids, labels, config, seed=7)
    second = make_partition(ids.copy(), labels.copy(), config, seed=7)

    # Assert
    assert len(first.client_ids) == len(second.client_ids) == 5
    for a, b in zip(first.client_ids, second.client_ids, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_different_seed_gives_different_partition(kind: str) -> None:
    # Prepare
    ids, labels = _dataset()
    config = DataConfig(num_clients=5, partition=kind)

    # Execute
    first = make_partition(ids, labels, config, seed=1)
    second = make_partition(ids, labels, config, seed=2)

    # Assert
    assert any(not np.array_equal(a, b) for a, b in zip(first.client_ids, second.client_ids, strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_partition_is_disjoint_complete_sorted_int64(kind: str) -> None:
    # Prepare
    ids, labels = _dataset(offset=5000)
    config = DataConfig(num_clients=4, partition=kind)

    # Execute
    partition = make_partition(ids, labels, config, seed=0)

    # Assert
    joined = np.concatenate(partition.client_ids)
    assert len(joined) == len(ids) == len(np.unique(joined))
    assert set(joined.tolist()) == set(ids.tolist())
    for part in partition.client_ids:
        assert part.dtype == np.int64 and len(part) > 0
        assert np.array_equal(part, np.sort(part))


def test_iid_shares_are_nearly_equal() -> None:
    # Prepare
    ids, labels = _dataset(n=103)

    # Execute
    partition = make_partition(ids, labels, DataConfig(num_clients=5, partition="iid"), seed=0)

    # Assert
    assert sorted(len(p) for p in partition.client_ids) == [20, 20, 21, 21, 21]


@pytest.mark.parametrize(("clients", "per_client"), [(5, 2), (3, 4), (10, 1), (4, 3)])
def test_by_class_gives_each_client_at_most_classes_per_client(clients: int, per_client: int) -> None:
    # Prepare
    ids, labels = _dataset()
    config = DataConfig(num_clients=clients, partition="by_class", classes_per_client=per_client)
    label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))

    # Execute
    partition = make_partition(ids, labels, config, seed=3)

    # Assert
    held = [{label_of[i] for i in part.tolist()} for part in partition.client_ids]
    assert all(1 <= len(classes) <= per_client for classes in held)
    assert set().union(*held) == set(range(NUM_CLASSES))
    assert sum(len(p) for p in partition.client_ids) == len(ids)


def test_by_class_with_exact_slots_gives_each_client_exactly_its_classes() -> None:
    # Prepare: 5 clients x 2 classes = the 10 classes, each class on exactly one client
    ids, labels = _dataset()
    label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))

    # Execute
    partition = make_partition(ids, labels, DataConfig(num_clients=5, partition="by_class"), seed=0)

    # Assert
    held = [{label_of[i] for i in part.tolist()} for part in partition.client_ids]
    assert all(len(classes) == 2 for classes in held)
    assert sorted(c for classes in held for c in classes) == list(range(NUM_CLASSES))


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_is_near_iid() -> None:
    # Prepare
    ids, labels = _dataset()

    # Execute
    skewed = make_partition(ids, labels, DataConfig(num_clients=4, partition="dirichlet", dirichlet_alpha=0.05), seed=0)
    even = make_partition(ids, labels, DataConfig(num_clients=4, partition="dirichlet", dirichlet_alpha=1000.0), seed=0)

    # Assert
    skew_tv = np.mean([_label_tv_from_uniform(p, ids, labels) for p in skewed.client_ids])
    even_tv = np.mean([_label_tv_from_uniform(p, ids, labels) for p in even.client_ids])
    assert skew_tv > 0.4
    assert even_tv < 0.05


def test_dirichlet_that_cannot_fill_every_client_raises_config_error() -> None:
    # Prepare: 2 classes, 10 clients, an alpha that puts each class on (almost) one client
    ids = np.arange(20)
    labels = ids % 2
    config = DataConfig(num_clients=10, partition="dirichlet", dirichlet_alpha=0.001)

    # Execute
    with pytest.raises(ConfigError) as caught:
        make_partition(ids, labels, config, seed=0)

    # Assert
    assert "alpha=0.001" in str(caught.value) and "fewer clients" in str(caught.value)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_per_client_caps_each_client_with_a_subset_of_its_share(kind: str) -> None:
    # Prepare
    ids, labels = _dataset()
    full = make_partition(ids, labels, DataConfig(num_clients=4, partition=kind), seed=9)

    # Execute
    capped = make_partition(ids, labels, DataConfig(num_clients=4, partition=kind, samples_per_client=30), seed=9)
    again = make_partition(ids, labels, DataConfig(num_clients=4, partition=kind, samples_per_client=30), seed=9)

    # Assert
    for small, big, repeat in zip(capped.client_ids, full.client_ids, again.client_ids, strict=True):
        assert len(small) == min(30, len(big))
        assert set(small.tolist()) <= set(big.tolist())
        assert np.array_equal(small, np.sort(small)) and np.array_equal(small, repeat)


def test_samples_per_client_larger_than_share_keeps_share() -> None:
    # Prepare
    ids, labels = _dataset(n=40)

    # Execute
    capped = make_partition(ids, labels, DataConfig(num_clients=4, samples_per_client=500), seed=0)
    full = make_partition(ids, labels, DataConfig(num_clients=4), seed=0)

    # Assert
    for a, b in zip(capped.client_ids, full.client_ids, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_fewer_samples_than_clients_raises_config_error(kind: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        make_partition(np.arange(3), np.array([0, 1, 2]), DataConfig(num_clients=5, partition=kind), seed=0)

    # Assert
    assert "3 samples" in str(caught.value) and "5 clients" in str(caught.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_by_class_that_would_leave_a_client_empty_raises_config_error(seed: int) -> None:
    # Prepare: 2 one-sample classes, both held by both clients -> one client gets nothing
    ids, labels = np.array([10, 11]), np.array([0, 1])
    config = DataConfig(num_clients=2, partition="by_class", classes_per_client=2)

    # Execute
    with pytest.raises(ConfigError) as caught:
        make_partition(ids, labels, config, seed=seed)

    # Assert
    assert "without samples" in str(caught.value) and "fewer clients" in str(caught.value)


def test_owner_of_maps_ids_to_partition_and_unknown_to_minus_one() -> None:
    # Prepare
    partition = Partition((np.array([1, 4, 7]), np.array([0, 2]), np.array([9])))

    # Execute
    owners = partition.owner_of(np.array([9, 0, 4, 100, 7, 2]))

    # Assert
    assert owners.tolist() == [2, 1, 0, -1, 0, 1]
    assert owners.dtype == np.int64
    assert partition.num_clients == 3


def test_owner_of_agrees_with_a_real_partition() -> None:
    # Prepare
    ids, labels = _dataset(n=200)
    partition = make_partition(ids, labels, DataConfig(num_clients=3, partition="dirichlet"), seed=4)

    # Execute
    owners = partition.owner_of(ids)

    # Assert
    for k in range(3):
        assert set(ids[owners == k].tolist()) == set(partition.for_client(k).tolist())


@pytest.mark.parametrize("bad", [-1, 3])
def test_for_client_outside_range_raises_config_error(bad: int) -> None:
    # Prepare
    partition = Partition((np.array([0]), np.array([1]), np.array([2])))

    # Execute
    with pytest.raises(ConfigError) as caught:
        partition.for_client(bad)

    # Assert
    assert f"got {bad}" in str(caught.value) and "[0, 3)" in str(caught.value)
