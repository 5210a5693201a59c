"""IndexedDataset: ids travel with the tensors through subsets and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedunlearn.data import IndexedDataset
from fedunlearn.errors import DeletionRequestError

IDS = [30, 10, 50, 20, 40, 60, 70]


def _dataset(ids: list[int] = IDS) -> IndexedDataset:
    """Sample with id i has input filled with i and label i % 3, so rows can be checked by id."""
    sample_ids = torch.tensor(ids, dtype=torch.int64)
    inputs = sample_ids.to(torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return IndexedDataset(inputs, sample_ids % 3, sample_ids, 3)


def _rows_consistent(ds: IndexedDataset) -> bool:
    return bool(
        torch.all(ds.inputs[:, 0, 0, 0] == ds.sample_ids.to(torch.float32))
        and torch.all(ds.labels == ds.sample_ids % 3)
    )


def test_subset_by_ids_keeps_dataset_order_and_rows() -> None:
    # Prepare
    ds = _dataset()

    # Execute
    subset = ds.subset_by_ids(np.array([60, 30, 20, 60]))

    # Assert
    assert subset.sample_ids.tolist() == [30, 20, 60]
    assert _rows_consistent(subset) and subset.num_classes == 3
    assert subset.ids().dtype == np.int64


def test_subset_by_ids_with_unknown_ids_names_them() -> None:
    # Prepare
    ds = _dataset()

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        ds.subset_by_ids(np.array([10, 999, 12345]))

    # Assert
    message = str(caught.value)
    assert "2 sample id(s)" in message and "999" in message and "12345" in message
    assert "10," not in message  # a present id is not reported


def test_subset_by_ids_with_many_unknown_ids_shows_the_first_ten() -> None:
    # Prepare
    ds = _dataset()
    unknown = np.arange(1000, 1015)

    # Execute
    with pytest.raises(DeletionRequestError) as caught:
        ds.subset_by_ids(unknown)

    # Assert
    message = str(caught.value)
    assert "15 sample id(s)" in message and "1009" in message and "..." in message
    assert "1010" not in message


def test_without_ids_drops_given_ids_and_ignores_unknown_ones() -> None:
    # Prepare
    ds = _dataset()

    # Execute
    rest = ds.without_ids(np.array([10, 70, 555]))
    unchanged = ds.without_ids(np.array([], dtype=np.int64))

    # Assert
    assert rest.sample_ids.tolist() == [30, 50, 20, 40, 60]
    assert _rows_consistent(rest)
    assert unchanged.sample_ids.tolist() == IDS


def test_subset_and_without_partition_the_dataset() -> None:
    # Prepare
    ds = _dataset()
    forget = np.array([50, 40])

    # Execute
    forgotten, retained = ds.subset_by_ids(forget), ds.without_ids(forget)

    # Assert
    assert sorted(forgotten.sample_ids.tolist() + retained.sample_ids.tolist()) == sorted(IDS)
    assert not set(forgotten.sample_ids.tolist()) & set(retained.sample_ids.tolist())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 10])
def test_batches_cover_every_sample_exactly_once_per_epoch(shuffle: bool, batch_size: int) -> None:
    # Prepare
    ds = _dataset()
    generator = torch.Generator().manual_seed(0)

    # Execute
    batches = list(ds.batches(batch_size, shuffle=shuffle, generator=generator))

    # Assert
    seen = torch.cat([b.sample_ids for b in batches]).tolist()
    assert sorted(seen) == sorted(IDS)
    assert len(batches) == ds.num_batches(batch_size) == -(-len(IDS) // batch_size)
    assert all(len(b.sample_ids) == batch_size for b in batches[:-1])
    for b in batches:
        assert torch.all(b.inputs[:, 0, 0, 0] == b.sample_ids.to(torch.float32))
        assert torch.all(b.labels == b.sample_ids % 3)
    if not shuffle:
        assert seen == IDS


def test_shuffled_batches_are_reproducible_with_a_seeded_generator() -> None:
    # Prepare
    ds = _dataset(list(range(100, 164)))

    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([b.sample_ids for b in ds.batches(8, shuffle=True, generator=generator)]).tolist()

    # Execute
    first, again, other = order(5), order(5), order(6)

    # Assert
    assert first == again
    assert first != other
    assert first != list(range(100, 164))


def test_consecutive_epochs_from_one_generator_differ() -> None:
    # Prepare
    ds = _dataset(list(range(32)))
    generator = torch.Generator().manual_seed(0)

    # Execute
    epoch1 = torch.cat([b.sample_ids for b in ds.batches(4, shuffle=True, generator=generator)]).tolist()
    epoch2 = torch.cat([b.sample_ids for b in ds.batches(4, shuffle=True, generator=generator)]).tolist()

    # Assert
    assert sorted(epoch1) == sorted(epoch2) == list(range(32))
    assert epoch1 != epoch2


@pytest.mark.parametrize(
    ("labels_len", "ids_len"), [(3, 4), (4, 3), (5, 5)], ids=["labels-short", "ids-short", "inputs-short"]
)
def test_length_mismatch_raises_value_error(labels_len: int, ids_len: int) -> None:
    # Prepare
    inputs = torch.zeros(4, 1, 2, 2)

    # Execute
    with pytest.raises(ValueError) as caught:
        IndexedDataset(inputs, torch.zeros(labels_len, dtype=torch.int64), torch.arange(ids_len), 2)

    # Assert
    assert "same length" in str(caught.value)


def test_non_int64_labels_raise_value_error() -> None:
    # Execute
    with pytest.raises(ValueError) as caught:
        IndexedDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32), torch.arange(2), 2)

    # Assert
    assert "int64" in str(caught.value)


def test_select_with_mask_and_positions_and_concat() -> None:
    # Prepare
    ds = _dataset()
    mask = ds.labels == 0

    # Execute
    by_mask = ds.select(mask)
    by_positions = ds.select(np.array([6, 0]))
    joined = IndexedDataset.concat([by_positions, by_mask])

    # Assert
    assert by_mask.sample_ids.tolist() == [30, 60]
    assert by_positions.sample_ids.tolist() == [70, 30]
    assert joined.sample_ids.tolist() == [70, 30, 30, 60]
    assert _rows_consistent(joined) and joined.input_shape == (1, 2, 2)
    with pytest.raises(ValueError):
        IndexedDataset.concat([])


def test_with_labels_keeps_inputs_and_ids() -> None:
    # Prepare
    ds = _dataset()

    # Execute
    flipped = ds.with_labels(torch.full((len(ds),), 2, dtype=torch.int32))

    # Assert
    assert flipped.labels.dtype == torch.int64 and flipped.labels.tolist() == [2] * len(IDS)
    assert torch.equal(flipped.inputs, ds.inputs) and torch.equal(flipped.sample_ids, ds.sample_ids)
    assert ds.labels.tolist() == [i % 3 for i in IDS]  # the original is untouched


@pytest.mark.parametrize(("size", "batch_size"), [(7, 3), (7, 7), (7, 10), (130, 64), (0, 4)])
def test_even_batches_are_as_many_as_full_ones_and_differ_by_at_most_one(size: int, batch_size: int) -> None:
    # Prepare
    ds = _dataset(list(range(size))) if size else _dataset([1]).without_ids([1])
    # Execute
    sizes = [len(b.labels) for b in ds.batches(batch_size, even=True)]
    ids = [
        int(i)
        for b in ds.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), even=True)
        for i in b.sample_ids
    ]
    # Assert: same count as full batches, no remainder batch, every sample once
    assert len(sizes) == ds.num_batches(batch_size)
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert sorted(ids) == list(range(size))


def test_training_a_batch_norm_model_has_no_small_remainder_batch() -> None:
    # Prepare: 130 samples in batches of 64 would leave a remainder of 2
    from torch import nn

    from fedunlearn.config import TrainConfig
    from fedunlearn.training import train_local

    sizes: list[int] = []

    class Sizes:
        def before_step(self, model: nn.Module) -> None:
            pass

        def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
            sizes.append(len(sample_ids))

    ds = _dataset(list(range(130)))
    bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    config = TrainConfig(model="mlp", batch_size=64, lr=0.01, local_epochs=1)
    # Execute
    train_local(bn, ds, config=config, seed=0, observer=Sizes())
    with_bn, sizes = sizes, []
    train_local(plain, ds, config=config, seed=0, observer=Sizes())
    # Assert: BatchNorm trains on 3 batches of 43-44; a model without it keeps full batches
    assert sorted(with_bn) == [43, 43, 44]
    assert sizes == [64, 64, 2]
