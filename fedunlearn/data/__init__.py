"""Datasets with stable sample ids, official loaders, and deterministic client partitions."""

from fedunlearn.data.federated import FederatedData, build_federated_data
from fedunlearn.data.indexed import Batch, IndexedDataset
from fedunlearn.data.partition import Partition, make_partition
from fedunlearn.data.roots import DATA_ENV_VAR, resolve_data_root
from fedunlearn.data.sources import DatasetBundle, available_datasets, check_dataset_name, load_dataset

__all__ = [
    "DATA_ENV_VAR",
    "Batch",
    "DatasetBundle",
    "FederatedData",
    "IndexedDataset",
    "Partition",
    "available_datasets",
    "build_federated_data",
    "check_dataset_name",
    "load_dataset",
    "make_partition",
    "resolve_data_root",
]
