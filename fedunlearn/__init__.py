"""fedunlearn: federated unlearning with pruned layer-wise update histories (pure PyTorch core).

The Flower apps live in ``clients`` and ``server``; this package never imports flwr.

>>> from fedunlearn import FederationConfig
>>> FederationConfig().history.keep_ratio
0.1
"""

from fedunlearn.config import DataConfig, FederationConfig, HistoryConfig, TrainConfig, UnlearnConfig
from fedunlearn.data import load_dataset
from fedunlearn.deletion import DeletionQueue, DeletionReceipt, DeletionRequest
from fedunlearn.history import HistoryStore
from fedunlearn.metrics import evaluate_unlearning
from fedunlearn.models import build_model
from fedunlearn.unlearning import ForgetRetainSplit, available_methods, get_method

__version__ = "0.1.0"

__all__ = [
    "DataConfig",
    "DeletionQueue",
    "DeletionReceipt",
    "DeletionRequest",
    "FederationConfig",
    "ForgetRetainSplit",
    "HistoryConfig",
    "HistoryStore",
    "TrainConfig",
    "UnlearnConfig",
    "available_methods",
    "build_model",
    "evaluate_unlearning",
    "get_method",
    "load_dataset",
]
