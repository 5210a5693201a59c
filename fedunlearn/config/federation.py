"""The root config of one federated run: its sections, and the node's own view of itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedunlearn.config.checks import Checks
from fedunlearn.config.sections import DataConfig, ExperimentConfig, HistoryConfig, RunSettings, TrainConfig
from fedunlearn.config.unlearn import UnlearnConfig
from fedunlearn.errors import ConfigError


@dataclass(frozen=True)
class FederationConfig:
    """One federated run, section by section (``run``, ``data``, ``train``, ``history``,
    ``unlearn``, ``experiment``). Build it from Flower's run config with
    ``fedunlearn.run_config.load_run_config``.

    >>> FederationConfig().train.rounds
    3
    """

    run: RunSettings = field(default_factory=RunSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def __post_init__(self) -> None:
        checks = Checks()
        client = self.experiment.corrupt_client
        checks.require(
            client is None or client < self.data.num_clients,
            f"experiment.corrupt-client must be < data.num-clients={self.data.num_clients}, got {client}",
        )
        checks.raise_if_any()

    @property
    def seed(self) -> int:
        """The run's seed (``run.seed``)."""
        return self.run.seed


@dataclass(frozen=True)
class NodeConfig:
    """What a SuperNode says about its own site (Flower ``node_config``), never the server.

    Flower sets ``partition-id`` and ``num-partitions`` in simulation; a deployed hospital
    node passes them (and its own ``state-dir`` / ``data-root``) with ``--node-config``. The
    number of partitions is Flower's to say: the node's data share is cut from it.
    ``state_dir`` defaults to ``<run.state-root>/client-<partition_id>``.
    """

    partition_id: int
    num_partitions: int
    state_dir: str | None = None
    data_root: str | None = None

    def __post_init__(self) -> None:
        checks = Checks()
        checks.require(self.num_partitions >= 1, f"num-partitions must be >= 1, got {self.num_partitions}")
        checks.require(
            0 <= self.partition_id < max(self.num_partitions, 1),
            f"partition-id must be in [0, {self.num_partitions}), got {self.partition_id}",
        )
        checks.raise_if_any()

    @staticmethod
    def from_node_config(node_config: Mapping[str, Any]) -> NodeConfig:
        """Parse Flower's node_config (kebab-case); missing partition keys are a ConfigError."""
        missing = [k for k in ("partition-id", "num-partitions") if k not in node_config]
        if missing:
            raise ConfigError(
                f"node_config lacks {', '.join(missing)}; start the SuperNode with "
                "--node-config 'partition-id=<k> num-partitions=<n>'"
            )

        def text(name: str) -> str | None:
            value = node_config.get(name)
            return None if value in (None, "") else str(value)

        try:
            return NodeConfig(
                partition_id=int(node_config["partition-id"]),
                num_partitions=int(node_config["num-partitions"]),
                state_dir=text("state-dir"),
                data_root=text("data-root"),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"node_config partition-id and num-partitions must be integers ({err})") from None

    def resolved_state_dir(self, federation: FederationConfig) -> str:
        """This node's state directory (its own, or one under the run's state root)."""
        return self.state_dir or f"{federation.run.state_root}/client-{self.partition_id}"
