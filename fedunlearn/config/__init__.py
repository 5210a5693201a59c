"""Configuration dataclasses, one per run-config section, validated on construction.

Flower's run config is flat (``train.lr = 0.05``). The Flower apps unflatten it with
Flower's own ``flwr.common.config.unflatten_dict`` (dots separate sections) and hand the
sections to ``fedunlearn.run_config.config_from_sections``, which builds these dataclasses
and checks the whole config, the method name and its settings included, before any
training. Defaults live here; ``[tool.flwr.app.config]`` in
``pyproject.toml`` mirrors them (a unit test checks that the two agree).
"""

from fedunlearn.config.checks import Checks
from fedunlearn.config.federation import FederationConfig, NodeConfig
from fedunlearn.config.sections import (
    CORRUPTION_KINDS,
    PARTITION_KINDS,
    SELECTOR_NAMES,
    VALUE_DTYPES,
    DataConfig,
    ExperimentConfig,
    HistoryConfig,
    RunSettings,
    TrainConfig,
)
from fedunlearn.config.unlearn import MethodSettings, UnlearnConfig

__all__ = [
    "CORRUPTION_KINDS",
    "PARTITION_KINDS",
    "SELECTOR_NAMES",
    "VALUE_DTYPES",
    "Checks",
    "DataConfig",
    "ExperimentConfig",
    "FederationConfig",
    "HistoryConfig",
    "MethodSettings",
    "NodeConfig",
    "RunSettings",
    "TrainConfig",
    "UnlearnConfig",
]
