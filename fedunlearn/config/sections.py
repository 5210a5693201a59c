"""The run config's sections other than ``unlearn.*``: one frozen dataclass each.

Run-config keys are ``<section>.<field in kebab-case>`` (``train.local-epochs``); a field
whose key differs from its name says so in its metadata (``key``). Every dataclass checks
itself on construction and reports all of its problems at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from fedunlearn.config.checks import Checks
from fedunlearn.types import PartitionKind, SelectorName, ValueDtype

PARTITION_KINDS: tuple[str, ...] = get_args(PartitionKind)
SELECTOR_NAMES: tuple[str, ...] = get_args(SelectorName)
VALUE_DTYPES: tuple[str, ...] = get_args(ValueDtype)
CorruptionKind = Literal["trigger", "mislabel"]
CORRUPTION_KINDS: tuple[str, ...] = get_args(CorruptionKind)


def key(name: str) -> dict[str, str]:
    """Field metadata naming the run-config key when it is not the kebab-case field name."""
    return {"key": name}


@dataclass(frozen=True)
class RunSettings:
    """``run.*``: how the federation runs, where its state and results go.

    ``seed`` seeds partitions, initial weights, local training and every unlearning step
    (the same seed gives the same model). ``round_timeout`` bounds each exchange's wait;
    ``retries`` is how often an unlearning exchange is re-sent to a client that dropped out
    (a transient fault; a deterministic failure is never retried unchanged).
    ``resume``: continue from the last round checkpoint under ``out_dir`` instead of round 1.
    """

    SECTION: ClassVar[str] = "run"
    seed: int = 0
    state_root: str = ".fedunlearn/state"
    out_dir: str | None = None
    round_timeout: float = 600.0
    retries: int = 2
    resume: bool = False

    def __post_init__(self) -> None:
        checks = Checks()
        checks.require(bool(self.state_root), "run.state-root must be a non-empty path")
        checks.positive("run.round-timeout", self.round_timeout)
        checks.at_least("run.retries", self.retries, 0)
        checks.raise_if_any()


@dataclass(frozen=True)
class DataConfig:
    """``data.*``: which dataset, where its files are, and how it is split over clients.

    ``num_clients`` is the number of partitions in a simulation (``fedunlearn simulate``);
    a deployed SuperNode takes its partition id and the number of partitions from its own
    ``node_config``. ``samples_per_client`` and ``test_samples`` cap sizes for quick runs.
    ``exclusive_class`` gives every training sample of that class to ``exclusive_client``
    alone (after the partition): a class only one client holds.
    """

    SECTION: ClassVar[str] = "data"
    dataset: str = "mnist"
    root: str | None = None
    num_clients: int = 5
    partition: PartitionKind = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    samples_per_client: int | None = None
    test_samples: int | None = None
    download: bool = False
    exclusive_class: int | None = None
    exclusive_client: int = 0

    def __post_init__(self) -> None:
        checks = Checks()
        checks.require(bool(self.dataset), "data.dataset must be a non-empty name, got ''")
        checks.at_least("data.exclusive-class", self.exclusive_class, 0, optional=True)
        checks.require(
            0 <= self.exclusive_client < max(self.num_clients, 1),
            f"data.exclusive-client must be in [0, {self.num_clients}), got {self.exclusive_client}",
        )
        checks.at_least("data.num-clients", self.num_clients, 1)
        checks.one_of("data.partition", self.partition, PARTITION_KINDS)
        checks.positive("data.dirichlet-alpha", self.dirichlet_alpha)
        checks.at_least("data.classes-per-client", self.classes_per_client, 1)
        checks.at_least("data.samples-per-client", self.samples_per_client, 1, optional=True)
        checks.at_least("data.test-samples", self.test_samples, 1, optional=True)
        checks.raise_if_any()


@dataclass(frozen=True)
class TrainConfig:
    """``train.*``: FedAvg rounds, client sampling and each client's local SGD.

    ``threads`` sets torch's thread count in each ClientApp (0: torch's default;
    simulations use 1 so that parallel virtual clients do not oversubscribe the cores).
    """

    SECTION: ClassVar[str] = "train"
    rounds: int = 3
    fraction: float = 1.0
    fraction_evaluate: float = 1.0
    model: str = "lenet"
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        checks = Checks()
        checks.at_least("train.rounds", self.rounds, 0)
        checks.in_range("train.fraction", self.fraction, 0.0, 1.0, low_open=True)
        checks.in_range("train.fraction-evaluate", self.fraction_evaluate, 0.0, 1.0)
        checks.require(bool(self.model), "train.model must be a non-empty name, got ''")
        checks.at_least("train.local-epochs", self.local_epochs, 1)
        checks.at_least("train.batch-size", self.batch_size, 1)
        checks.positive("train.lr", self.lr)
        checks.in_range("train.momentum", self.momentum, 0.0, 1.0)
        checks.non_negative("train.weight-decay", self.weight_decay)
        checks.at_least("train.threads", self.threads, 0)
        checks.require(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            f"train.device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}",
        )
        checks.raise_if_any()


@dataclass(frozen=True)
class HistoryConfig:
    """``history.*``: what each client records of its local steps (the pruned layer-wise history).

    ``keep_ratio`` is rho in ALGORITHMS.md: the fraction of each layer's entries kept per
    step (1.0 = full, conventional amnesiac storage). ``selector`` picks which entries:
    largest magnitude (``topk``) or uniformly at random (``random``, for ablation).
    ``record_full`` also keeps a dense history from the same steps, and ``server_log`` has
    the server keep FedEraser's log of client updates. Both are recorded anyway when the
    configured method reads them (its ``history`` trait); the flags let an experiment that
    compares methods record them for all. ``budget_mb`` caps each client's history on disk
    (None: no cap): at the cap the oldest rounds are dropped (``fedunlearn.site.enforce_budget``).
    """

    SECTION: ClassVar[str] = "history"
    keep_ratio: float = 0.1
    selector: SelectorName = "topk"
    value_dtype: ValueDtype = field(default="float32", metadata=key("dtype"))
    enabled: bool = field(default=True, metadata=key("record"))
    record_full: bool = False
    server_log: bool = False
    budget_mb: float | None = None

    def __post_init__(self) -> None:
        checks = Checks()
        checks.in_range("history.keep-ratio", self.keep_ratio, 0.0, 1.0, low_open=True)
        if self.budget_mb is not None:
            checks.positive("history.budget-mb", self.budget_mb)
        checks.one_of("history.selector", self.selector, SELECTOR_NAMES)
        checks.one_of("history.dtype", self.value_dtype, VALUE_DTYPES)
        checks.raise_if_any()


@dataclass(frozen=True)
class ExperimentConfig:
    """``experiment.*``: what only experiments use: a deletion schedule and corrupted data.

    ``deletion_schedule`` (``fedunlearn.schedule``) is read by the simulation driver alone,
    which files each request on its client's disk as a data officer would; the ServerApp
    and ClientApp never see it. ``corrupt_client`` gives one client corrupted records:
    ``trigger`` (a BadNets square, relabelled ``trigger_target``: poisoned samples, or a
    backdoored client with a large ``corrupt_fraction``) or ``mislabel`` (a random wrong
    label each: records a model can only fit by memorising them). The schedule entry kind
    ``corrupted`` deletes exactly those records.
    """

    SECTION: ClassVar[str] = "experiment"
    deletion_schedule: str = ""
    corrupt_client: int | None = None
    corrupt_kind: CorruptionKind = "trigger"
    corrupt_fraction: float = 0.5
    trigger_target: int = 0
    trigger_size: int = 4

    def __post_init__(self) -> None:
        checks = Checks()
        checks.at_least("experiment.corrupt-client", self.corrupt_client, 0, optional=True)
        checks.one_of("experiment.corrupt-kind", self.corrupt_kind, CORRUPTION_KINDS)
        checks.in_range("experiment.corrupt-fraction", self.corrupt_fraction, 0.0, 1.0, low_open=True)
        checks.at_least("experiment.trigger-target", self.trigger_target, 0)
        checks.require(
            1 <= self.trigger_size <= 14, f"experiment.trigger-size must be in [1, 14], got {self.trigger_size}"
        )
        checks.raise_if_any()
