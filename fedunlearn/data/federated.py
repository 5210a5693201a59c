"""The data one federated run sees: the loaded set, its partition and each client's share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedunlearn.config import DataConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.data.partition import Partition, make_partition
from fedunlearn.data.sources import DatasetBundle, load_dataset


@dataclass(frozen=True)
class FederatedData:
    """A dataset split over clients, with the (possibly capped) test set."""

    bundle: DatasetBundle
    partition: Partition
    test: IndexedDataset

    def client_train(self, partition_id: int) -> IndexedDataset:
        """Training samples of one client, in id order."""
        return self.bundle.train.subset_by_ids(self.partition.for_client(partition_id))

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return self.bundle.num_classes


def build_federated_data(config: DataConfig, *, seed: int) -> FederatedData:
    """Load ``config.dataset`` and partition it; identical on every client for the same seed.

    Every client builds the same partition from the shared seed and keeps only its share, so
    no client ever needs another's data.
    """
    bundle = load_dataset(config.dataset, root=config.root, download=config.download)
    partition = make_partition(bundle.train.ids(), bundle.train.labels.numpy(), config, seed=seed)
    test = bundle.test
    if config.test_samples is not None and config.test_samples < len(test):
        picked = np.random.default_rng(seed + 1).choice(len(test), config.test_samples, replace=False)
        test = test.select(np.sort(picked))
    return FederatedData(bundle, partition, test)
