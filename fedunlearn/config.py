"""All configuration dataclasses, validated on construction, and the one bridge from Flower's
kebab-case ``run_config`` to them.

Defaults live here; ``[tool.flwr.app.config]`` in ``pyproject.toml`` mirrors them (a unit test
checks that the two agree).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

from fedunlearn.errors import ConfigError
from fedunlearn.types import PartitionKind, SelectorName, ValueDtype

PARTITION_KINDS: tuple[str, ...] = get_args(PartitionKind)
SELECTOR_NAMES: tuple[str, ...] = get_args(SelectorName)
VALUE_DTYPES: tuple[str, ...] = get_args(ValueDtype)


def _key(name: str) -> dict[str, str]:
    """Field metadata naming the run-config key when it is not the kebab-case field name."""
    return {"run_config_key": name}


class _Checks:
    """Collects validation problems so a config reports all of them at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)

    def in_range(self, name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
        lower_ok = value > low if low_open else value >= low
        bracket = "(" if low_open else "["
        self.require(
            lower_ok and value <= high and not math.isnan(value),
            f"{name} must be in {bracket}{low}, {high}], got {value}",
        )

    def positive(self, name: str, value: float) -> None:
        self._finite_then(name, value, value > 0, "> 0")

    def non_negative(self, name: str, value: float) -> None:
        self._finite_then(name, value, value >= 0, ">= 0")

    def _finite_then(self, name: str, value: float, ok: bool, bound: str) -> None:
        if not math.isfinite(value):
            self.problems.append(f"{name} must be a finite number {bound}, got {value}")
        else:
            self.require(ok, f"{name} must be {bound}, got {value}")

    def one_of(self, name: str, value: str, allowed: tuple[str, ...]) -> None:
        self.require(value in allowed, f"{name} must be one of {', '.join(allowed)}; got {value!r}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where its files are, and how it is split over clients.

    ``samples_per_client`` and ``test_samples`` cap sizes for quick runs (None: all).
    """

    dataset: str = "mnist"
    root: str | None = field(default=None, metadata=_key("data-root"))
    num_clients: int = 5
    partition: PartitionKind = "iid"
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    samples_per_client: int | None = None
    test_samples: int | None = None
    download: bool = False

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.require(bool(self.dataset), "dataset must be a non-empty name, got ''")
        checks.require(self.num_clients >= 1, f"num_clients must be >= 1, got {self.num_clients}")
        checks.one_of("partition", self.partition, PARTITION_KINDS)
        checks.positive("dirichlet_alpha", self.dirichlet_alpha)
        checks.require(self.classes_per_client >= 1, f"classes_per_client must be >= 1, got {self.classes_per_client}")
        for name in ("samples_per_client", "test_samples"):
            value = getattr(self, name)
            checks.require(value is None or value >= 1, f"{name} must be >= 1 or None, got {value}")
        checks.raise_if_any()


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each client: model architecture and plain SGD settings."""

    model: str = "lenet"
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.require(bool(self.model), "model must be a non-empty name, got ''")
        checks.require(self.local_epochs >= 1, f"local_epochs must be >= 1, got {self.local_epochs}")
        checks.require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        checks.positive("lr", self.lr)
        checks.in_range("momentum", self.momentum, 0.0, 1.0)
        checks.non_negative("weight_decay", self.weight_decay)
        checks.require(
            self.device in ("auto", "cpu") or self.device.startswith("cuda"),
            f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}",
        )
        checks.raise_if_any()


@dataclass(frozen=True)
class HistoryConfig:
    """What each client records of its local steps (the pruned layer-wise update history).

    ``keep_ratio`` is rho in ALGORITHMS.md: the fraction of each layer's entries kept per
    step (1.0 = full, conventional amnesiac storage). ``selector`` picks which entries:
    largest magnitude (``topk``) or uniformly at random (``random``, for ablation).
    ``record_full`` also keeps a dense (keep_ratio 1.0) history from the same steps, which
    conventional ``amnesiac`` uses: for benchmarks that compare the two.
    """

    keep_ratio: float = 0.1
    selector: SelectorName = field(default="topk", metadata=_key("history-selector"))
    value_dtype: ValueDtype = field(default="float32", metadata=_key("history-dtype"))
    enabled: bool = field(default=True, metadata=_key("record-history"))
    record_full: bool = field(default=False, metadata=_key("history-record-full"))

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.in_range("keep_ratio", self.keep_ratio, 0.0, 1.0, low_open=True)
        checks.one_of("selector", self.selector, SELECTOR_NAMES)
        checks.one_of("value_dtype", self.value_dtype, VALUE_DTYPES)
        checks.raise_if_any()


@dataclass(frozen=True)
class UnlearnConfig:
    """How a deletion request is served: the method and its knobs (ALGORITHMS.md notation).

    Shared by all methods; each reads the fields it needs (see its docstring).
    - step methods (label-flip, gradient ascent, random-label, fine-tune): ``lr``, ``epochs``,
      ``max_steps``, ``batch_size``; partial versions select ``select_ratio`` of each layer's
      step with ``selector``; ``target_fa`` stops ascent early once FA reaches it;
    - amnesiac: ``finetune_epochs`` of CE on retained data afterwards (0 = none);
    - SFR-on (Huang et al. 2024, official code defaults scaled down): ``sfr_iters`` (n_iters),
      ``forget_freq``, ``temperature`` (lambda), ``forget_scale`` (a_0 in a_t), ``clip_norm``,
      ``saliency`` (mask rule), ``saliency_gamma``, ``sfr_lr``, ``momentum``, ``weight_decay``;
    - federated phase: ``outer_steps`` (I), ``remain_steps`` (K local CE steps per remaining
      client), ``remain_fraction`` of remaining clients sampled, ``alpha`` (Lookahead outer
      step, 1 = off), ``apply_scale`` (server multiplies the forgetting client's change by it),
      ``max_ta_drop``: verification fails (and the phase is rolled back) if test accuracy
      falls by more than this fraction.
    """

    method: str = field(default="partial_amnesiac", metadata=_key("unlearn-method"))
    lr: float = field(default=0.01, metadata=_key("unlearn-lr"))
    epochs: int = field(default=5, metadata=_key("unlearn-epochs"))
    max_steps: int | None = field(default=None, metadata=_key("unlearn-max-steps"))
    batch_size: int = field(default=64, metadata=_key("unlearn-batch-size"))
    select_ratio: float = field(default=0.1, metadata=_key("unlearn-select-ratio"))
    selector: SelectorName = field(default="topk", metadata=_key("unlearn-selector"))
    target_fa: float | None = field(default=None, metadata=_key("unlearn-target-fa"))
    finetune_epochs: int = field(default=0, metadata=_key("unlearn-finetune-epochs"))
    sfr_iters: int = field(default=150, metadata=_key("sfr-iters"))
    forget_freq: int = field(default=5, metadata=_key("sfr-forget-freq"))
    temperature: float = field(default=0.5, metadata=_key("sfr-temperature"))
    forget_scale: float = field(default=25.0, metadata=_key("sfr-forget-scale"))
    clip_norm: float = field(default=7.0, metadata=_key("sfr-clip-norm"))
    saliency: str = field(default="fisher", metadata=_key("sfr-saliency"))
    saliency_gamma: float = field(default=1.0, metadata=_key("sfr-saliency-gamma"))
    sfr_lr: float = field(default=0.01, metadata=_key("sfr-lr"))
    momentum: float = field(default=0.9, metadata=_key("sfr-momentum"))
    weight_decay: float = field(default=5e-4, metadata=_key("sfr-weight-decay"))
    outer_steps: int = field(default=3, metadata=_key("unlearn-outer-steps"))
    remain_steps: int = field(default=5, metadata=_key("unlearn-remain-steps"))
    remain_fraction: float = field(default=1.0, metadata=_key("unlearn-remain-fraction"))
    alpha: float = field(default=1.0, metadata=_key("unlearn-alpha"))
    apply_scale: float = field(default=1.0, metadata=_key("unlearn-apply-scale"))
    max_ta_drop: float = field(default=0.25, metadata=_key("unlearn-max-ta-drop"))

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.require(bool(self.method), "method must be a non-empty name, got ''")
        for name in ("lr", "sfr_lr", "temperature", "clip_norm", "saliency_gamma", "apply_scale"):
            checks.positive(name, getattr(self, name))
        for name in ("epochs", "batch_size", "sfr_iters", "forget_freq", "outer_steps"):
            checks.require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("finetune_epochs", "remain_steps", "forget_scale", "weight_decay"):
            checks.non_negative(name, getattr(self, name))
        checks.require(
            self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or None, got {self.max_steps}"
        )
        checks.in_range("select_ratio", self.select_ratio, 0.0, 1.0, low_open=True)
        checks.one_of("selector", self.selector, SELECTOR_NAMES)
        checks.require(
            self.target_fa is None or 0.0 <= self.target_fa <= 1.0,
            f"target_fa must be in [0, 1] or None, got {self.target_fa}",
        )
        checks.in_range("momentum", self.momentum, 0.0, 1.0)
        checks.in_range("remain_fraction", self.remain_fraction, 0.0, 1.0)
        checks.in_range("alpha", self.alpha, 0.0, 1.0, low_open=True)
        checks.in_range("max_ta_drop", self.max_ta_drop, 0.0, 1.0)
        checks.raise_if_any()


@dataclass(frozen=True)
class BackdoorConfig:
    """A backdoored client for the client-level deletion check (DESIGN.md, Evaluation).

    Client ``client`` stamps a ``trigger_size`` square on ``fraction`` of its samples and
    relabels them ``target``; after it is forgotten the attack success rate should fall to
    RT's level. ``client=None``: no backdoor.
    """

    client: int | None = field(default=None, metadata=_key("backdoor-client"))
    fraction: float = field(default=0.5, metadata=_key("backdoor-fraction"))
    target: int = field(default=0, metadata=_key("backdoor-target"))
    trigger_size: int = field(default=4, metadata=_key("backdoor-trigger-size"))

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.require(self.client is None or self.client >= 0, f"backdoor client must be >= 0, got {self.client}")
        checks.in_range("backdoor fraction", self.fraction, 0.0, 1.0, low_open=True)
        checks.non_negative("backdoor target", self.target)
        checks.require(1 <= self.trigger_size <= 14, f"trigger_size must be in [1, 14], got {self.trigger_size}")
        checks.raise_if_any()


@dataclass(frozen=True)
class FederationConfig:
    """One federated run: rounds, sampling, where client state and results go, and the
    nested data / training / history configs.

    ``client_threads`` sets torch's thread count in each ClientApp (0: torch's default;
    simulations use 1 so that parallel virtual clients do not oversubscribe the cores).
    ``round_timeout`` bounds how long the server waits for replies in each exchange.
    ``deletion_schedule`` files deletions on the owning clients during simulations (see
    ``fedunlearn.schedule``); ``retrain_mode`` turns the run into its retrain baseline (RT):
    the scheduled samples are excluded from round 1 and nothing is unlearned.
    ``phase_retries``: how often an unlearning exchange is retried when a client drops out.
    """

    num_rounds: int = field(default=3, metadata=_key("num-server-rounds"))
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    seed: int = 0
    state_root: str = ".fedunlearn/state"
    out_dir: str | None = None
    round_timeout: float = 600.0
    client_threads: int = 0
    deletion_schedule: str = ""
    retrain_mode: bool = False
    phase_retries: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    backdoor: BackdoorConfig = field(default_factory=BackdoorConfig)

    def __post_init__(self) -> None:
        checks = _Checks()
        checks.require(self.num_rounds >= 1, f"num_rounds must be >= 1, got {self.num_rounds}")
        checks.in_range("fraction_train", self.fraction_train, 0.0, 1.0, low_open=True)
        checks.in_range("fraction_evaluate", self.fraction_evaluate, 0.0, 1.0)
        checks.require(bool(self.state_root), "state_root must be a non-empty path")
        checks.positive("round_timeout", self.round_timeout)
        checks.non_negative("client_threads", self.client_threads)
        checks.non_negative("phase_retries", self.phase_retries)
        checks.require(
            self.backdoor.client is None or self.backdoor.client < self.data.num_clients,
            f"backdoor client must be < num_clients={self.data.num_clients}, got {self.backdoor.client}",
        )
        try:
            from fedunlearn.schedule import parse_schedule

            late = [
                e
                for e in parse_schedule(self.deletion_schedule, num_clients=self.data.num_clients)
                if e.round > self.num_rounds
            ]
            checks.require(
                not late,
                f"deletion-schedule has entries after the last round {self.num_rounds}: {[e.request_id for e in late]}",
            )
        except ConfigError as err:
            checks.problems.extend(err.problems)
        checks.raise_if_any()

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        """Build from Flower's kebab-case ``run_config`` (unknown keys are an error)."""
        config: FederationConfig = from_run_config(cls, run_config)
        return config

    def to_run_config(self, *, include_unset: bool = False) -> dict[str, bool | int | float | str]:
        """The flat kebab-case mapping ``from_run_config`` reads (None values left out, or
        written as ``""`` with ``include_unset``, as ``[tool.flwr.app.config]`` needs: Flower
        only accepts ``--run-config`` overrides of keys the table declares)."""
        return to_run_config(self, include_unset=include_unset)


# --------------------------------------------------------------------------- run_config bridge


def _run_config_keys(config_type: type) -> dict[str, tuple[tuple[str, ...], Any]]:
    """Map each run-config key to the attribute path and type of the field it sets."""
    keys: dict[str, tuple[tuple[str, ...], Any]] = {}
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            for key, (path, sub_hint) in _run_config_keys(typing.cast(type, hint)).items():
                keys[key] = ((f.name, *path), sub_hint)
            continue
        key = f.metadata.get("run_config_key", f.name.replace("_", "-"))
        if key in keys:
            raise AssertionError(f"run-config key {key!r} is used twice in {config_type.__name__}")
        keys[key] = ((f.name,), hint)
    return keys


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a run-config scalar to a field's type, or raise a ConfigError naming the key."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(key, value, options[0])
    if origin is typing.Literal:
        return str(value)
    try:
        if hint is bool:
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("true", "1", "yes")
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"run-config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def from_run_config(config_type: type[Any], run_config: Mapping[str, Any]) -> Any:
    """Build ``config_type`` (a dataclass, possibly nested) from kebab-case keys.

    This is the only place where run-config keys meet dataclass fields. Unknown keys, values
    of the wrong type and out-of-range values (of every nested config) are collected and
    raised together as one ConfigError.
    """
    keys = _run_config_keys(config_type)
    problems: list[str] = []
    values: dict[tuple[str, ...], Any] = {}
    for key, raw in run_config.items():
        if key not in keys:
            problems.append(f"unknown run-config key {key!r}; known keys: {', '.join(sorted(keys))}")
            continue
        path, hint = keys[key]
        try:
            values[path] = _coerce(key, raw, hint)
        except ConfigError as err:
            problems.extend(err.problems)
    try:
        config = _build(config_type, values, ())
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return config


def _build(config_type: type[Any], values: Mapping[tuple[str, ...], Any], prefix: tuple[str, ...]) -> Any:
    """Construct nested configs bottom-up; every nested config's problems are reported together.

    A nested config that fails is replaced, while its parent is checked, by one holding only
    the values that are valid on their own, so the parent's checks still run on real values.
    """
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(config_type):
        path = (*prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            try:
                kwargs[f.name] = _build(hints[f.name], values, path)
            except ConfigError as err:
                problems.extend(err.problems)
                kwargs[f.name] = _valid_part(hints[f.name], values, path)
        elif path in values:
            kwargs[f.name] = values[path]
    try:
        config = config_type(**kwargs)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return config


def _valid_part(config_type: type[Any], values: Mapping[tuple[str, ...], Any], prefix: tuple[str, ...]) -> Any:
    """``config_type`` (all defaults) updated with each given value that is valid on its own."""
    config = config_type()
    for path, value in values.items():
        if path[:-1] == prefix:
            try:
                config = dataclasses.replace(config, **{path[-1]: value})
            except ConfigError:
                pass
    return config


def to_run_config(config: Any, *, include_unset: bool = False) -> dict[str, bool | int | float | str]:
    """Flatten a (nested) config dataclass to kebab-case run-config keys (None: left out, or
    ``""`` with ``include_unset``; ``from_run_config`` reads ``""`` back as None)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, (path, _hint) in _run_config_keys(type(config)).items():
        value: Any = config
        for name in path:
            value = getattr(value, name)
        if value is not None:
            flat[key] = value
        elif include_unset:
            flat[key] = ""
    return flat


@dataclass(frozen=True)
class NodeConfig:
    """What a SuperNode says about its own site (Flower ``node_config``), never the server.

    In simulation Flower sets ``partition-id`` and ``num-partitions``; a deployed hospital
    node passes them (and its own ``state-dir`` / ``data-root``) with ``--node-config``.
    ``state_dir`` defaults to ``<state_root>/client-<partition_id>``.
    """

    partition_id: int
    num_partitions: int
    state_dir: str | None = None
    data_root: str | None = None

    def __post_init__(self) -> None:
        checks = _Checks()
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
        return NodeConfig(
            partition_id=_coerce("partition-id", node_config["partition-id"], int),
            num_partitions=_coerce("num-partitions", node_config["num-partitions"], int),
            state_dir=_coerce("state-dir", node_config.get("state-dir"), str | None),
            data_root=_coerce("data-root", node_config.get("data-root"), str | None),
        )

    def resolved_state_dir(self, federation: FederationConfig) -> str:
        """This node's state directory (its own, or one under the run's state root)."""
        return self.state_dir or f"{federation.state_root}/client-{self.partition_id}"
