"""Config dataclasses: defaults, range checks, the run-config bridge, node config, pyproject mirror."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedunlearn.config import (
    BackdoorConfig,
    DataConfig,
    FederationConfig,
    HistoryConfig,
    NodeConfig,
    TrainConfig,
    UnlearnConfig,
    from_run_config,
)
from fedunlearn.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIG_TYPES = (DataConfig, TrainConfig, HistoryConfig, UnlearnConfig, BackdoorConfig, FederationConfig)


def _problems(factory: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        factory(**kwargs)
    return caught.value.problems


@pytest.mark.parametrize("config_type", CONFIG_TYPES, ids=lambda t: t.__name__)
def test_defaults_are_valid(config_type: type) -> None:
    # Execute
    config = config_type()

    # Assert
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.__setattr__(dataclasses.fields(config)[0].name, None)


# Each case: a config, one bad value, and the fragments its message must contain (field, value, range).
RANGE_CASES: list[tuple[type, dict[str, Any], list[str]]] = [
    (DataConfig, {"dataset": ""}, ["dataset", "non-empty"]),
    (DataConfig, {"num_clients": 0}, ["num_clients", ">= 1", "got 0"]),
    (DataConfig, {"partition": "shards"}, ["partition", "iid, dirichlet, by_class", "'shards'"]),
    (DataConfig, {"dirichlet_alpha": 0.0}, ["dirichlet_alpha", "> 0", "got 0.0"]),
    (DataConfig, {"dirichlet_alpha": -1.0}, ["dirichlet_alpha", "> 0", "got -1.0"]),
    (DataConfig, {"classes_per_client": 0}, ["classes_per_client", ">= 1", "got 0"]),
    (DataConfig, {"samples_per_client": 0}, ["samples_per_client", ">= 1 or None", "got 0"]),
    (DataConfig, {"test_samples": -5}, ["test_samples", ">= 1 or None", "got -5"]),
    (TrainConfig, {"model": ""}, ["model", "non-empty"]),
    (TrainConfig, {"local_epochs": 0}, ["local_epochs", ">= 1", "got 0"]),
    (TrainConfig, {"batch_size": 0}, ["batch_size", ">= 1", "got 0"]),
    (TrainConfig, {"lr": 0.0}, ["lr", "> 0", "got 0.0"]),
    (TrainConfig, {"lr": math.nan}, ["lr", "> 0", "got nan"]),
    (TrainConfig, {"momentum": 1.5}, ["momentum", "[0.0, 1.0]", "got 1.5"]),
    (TrainConfig, {"momentum": math.nan}, ["momentum", "[0.0, 1.0]", "got nan"]),
    (TrainConfig, {"weight_decay": -0.1}, ["weight_decay", ">= 0", "got -0.1"]),
    (TrainConfig, {"device": "tpu"}, ["device", "'auto', 'cpu' or 'cuda[:N]'", "'tpu'"]),
    (HistoryConfig, {"keep_ratio": 0.0}, ["keep_ratio", "(0.0, 1.0]", "got 0.0"]),
    (HistoryConfig, {"keep_ratio": 1.5}, ["keep_ratio", "(0.0, 1.0]", "got 1.5"]),
    (HistoryConfig, {"keep_ratio": math.nan}, ["keep_ratio", "(0.0, 1.0]", "got nan"]),
    (HistoryConfig, {"selector": "largest"}, ["selector", "topk, random", "'largest'"]),
    (HistoryConfig, {"value_dtype": "int8"}, ["value_dtype", "float32, float16", "'int8'"]),
    (UnlearnConfig, {"method": ""}, ["method", "non-empty"]),
    *[
        (UnlearnConfig, {name: 0.0}, [name, "> 0", "got 0.0"])
        for name in ("lr", "sfr_lr", "temperature", "clip_norm", "saliency_gamma", "apply_scale")
    ],
    *[
        (UnlearnConfig, {name: 0}, [name, ">= 1", "got 0"])
        for name in ("epochs", "batch_size", "sfr_iters", "forget_freq", "outer_steps")
    ],
    *[
        (UnlearnConfig, {name: -1}, [name, ">= 0", "got -1"])
        for name in ("finetune_epochs", "remain_steps", "forget_scale", "weight_decay")
    ],
    (UnlearnConfig, {"max_steps": 0}, ["max_steps", ">= 1 or None", "got 0"]),
    (UnlearnConfig, {"select_ratio": 0.0}, ["select_ratio", "(0.0, 1.0]", "got 0.0"]),
    (UnlearnConfig, {"selector": "all"}, ["selector", "topk, random", "'all'"]),
    (UnlearnConfig, {"target_fa": 1.5}, ["target_fa", "[0, 1] or None", "got 1.5"]),
    (UnlearnConfig, {"momentum": -0.1}, ["momentum", "[0.0, 1.0]", "got -0.1"]),
    (UnlearnConfig, {"remain_fraction": 1.1}, ["remain_fraction", "[0.0, 1.0]", "got 1.1"]),
    (UnlearnConfig, {"alpha": 0.0}, ["alpha", "(0.0, 1.0]", "got 0.0"]),
    (UnlearnConfig, {"max_ta_drop": 2.0}, ["max_ta_drop", "[0.0, 1.0]", "got 2.0"]),
    (BackdoorConfig, {"client": -1}, ["backdoor client", ">= 0", "got -1"]),
    (BackdoorConfig, {"fraction": 0.0}, ["backdoor fraction", "(0.0, 1.0]", "got 0.0"]),
    (BackdoorConfig, {"target": -1}, ["backdoor target", ">= 0", "got -1"]),
    (BackdoorConfig, {"trigger_size": 15}, ["trigger_size", "[1, 14]", "got 15"]),
    (FederationConfig, {"num_rounds": 0}, ["num_rounds", ">= 1", "got 0"]),
    (FederationConfig, {"fraction_train": 0.0}, ["fraction_train", "(0.0, 1.0]", "got 0.0"]),
    (FederationConfig, {"fraction_evaluate": 1.5}, ["fraction_evaluate", "[0.0, 1.0]", "got 1.5"]),
    (FederationConfig, {"state_root": ""}, ["state_root", "non-empty"]),
    (FederationConfig, {"round_timeout": 0.0}, ["round_timeout", "> 0", "got 0.0"]),
    (FederationConfig, {"client_threads": -1}, ["client_threads", ">= 0", "got -1"]),
    (FederationConfig, {"phase_retries": -1}, ["phase_retries", ">= 0", "got -1"]),
    (FederationConfig, {"backdoor": BackdoorConfig(client=5)}, ["backdoor client", "num_clients=5", "got 5"]),
    (FederationConfig, {"deletion_schedule": "9:0:client"}, ["deletion-schedule", "last round 3"]),
    (FederationConfig, {"deletion_schedule": "1:7:client"}, ["deletion-schedule", "'1:7:client'"]),
]


@pytest.mark.parametrize(
    ("config_type", "kwargs", "fragments"),
    RANGE_CASES,
    ids=[f"{c.__name__}-{next(iter(k))}-{next(iter(k.values()))}" for c, k, _ in RANGE_CASES],
)
def test_each_range_check_names_field_value_and_range(
    config_type: type, kwargs: dict[str, Any], fragments: list[str]
) -> None:
    # Execute
    problems = _problems(config_type, **kwargs)

    # Assert
    assert len(problems) == 1, problems
    for fragment in fragments:
        assert fragment in problems[0], f"{fragment!r} not in {problems[0]!r}"


BOUNDARY_CASES: list[tuple[type, dict[str, Any]]] = [
    (HistoryConfig, {"keep_ratio": 1.0}),
    (UnlearnConfig, {"alpha": 1.0, "select_ratio": 1.0, "remain_fraction": 0.0, "target_fa": 0.0, "max_ta_drop": 1.0}),
    (TrainConfig, {"momentum": 0.0, "weight_decay": 0.0, "device": "cuda:1"}),
    (FederationConfig, {"fraction_evaluate": 0.0, "client_threads": 0, "phase_retries": 0}),
    (DataConfig, {"num_clients": 1, "samples_per_client": 1, "classes_per_client": 1}),
    (BackdoorConfig, {"client": 0, "fraction": 1.0, "trigger_size": 14}),
]


@pytest.mark.parametrize(("config_type", "kwargs"), BOUNDARY_CASES, ids=[c.__name__ for c, _ in BOUNDARY_CASES])
def test_boundary_values_are_accepted(config_type: type, kwargs: dict[str, Any]) -> None:
    # Execute
    config = config_type(**kwargs)

    # Assert
    assert {k: getattr(config, k) for k in kwargs} == kwargs


def test_one_config_reports_all_its_problems_together() -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        TrainConfig(lr=-1.0, batch_size=0, device="gpu")

    # Assert
    assert len(caught.value.problems) == 3
    assert str(caught.value).startswith("3 configuration problems:")
    assert all(p in str(caught.value) for p in caught.value.problems)


# ---------------------------------------------------------------------------- run_config


def test_from_run_config_maps_kebab_keys_into_nested_configs() -> None:
    # Prepare
    run_config = {
        "num-server-rounds": 7,
        "num-clients": 4,
        "lr": 0.2,
        "keep-ratio": 0.5,
        "history-selector": "random",
        "unlearn-method": "sfr_on",
        "sfr-iters": 20,
        "record-history": False,
        "data-root": "/data",
        "backdoor-client": 2,
        "unlearn-max-steps": 9,
    }

    # Execute
    config = FederationConfig.from_run_config(run_config)

    # Assert
    assert config.num_rounds == 7 and config.data.num_clients == 4 and config.data.root == "/data"
    assert config.train.lr == 0.2 and config.history.keep_ratio == 0.5 and config.history.selector == "random"
    assert config.history.enabled is False
    assert config.unlearn.method == "sfr_on" and config.unlearn.sfr_iters == 20 and config.unlearn.max_steps == 9
    assert config.backdoor.client == 2
    assert config.train.momentum == TrainConfig().momentum  # untouched keys keep defaults


def test_from_run_config_coerces_strings_from_the_command_line() -> None:
    # Prepare
    run_config = {
        "num-server-rounds": "4",
        "lr": "0.5",
        "record-history": "false",
        "download": "yes",
        "samples-per-client": "none",
        "test-samples": "100",
        "seed": 3.0,
    }

    # Execute
    config = FederationConfig.from_run_config(run_config)

    # Assert
    assert config.num_rounds == 4 and isinstance(config.num_rounds, int)
    assert config.train.lr == 0.5 and config.history.enabled is False and config.data.download is True
    assert config.data.samples_per_client is None and config.data.test_samples == 100 and config.seed == 3


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", "three"),
        ("num-server-rounds", 2.5),
        ("num-clients", True),
        ("lr", "fast"),
        ("record-history", "maybe"),
        ("record-history", 0.5),
        ("lr", True),
    ],
)
def test_from_run_config_rejects_wrong_types_naming_the_key(key: str, value: Any) -> None:
    # Execute
    problems = _problems(FederationConfig.from_run_config, run_config={key: value})

    # Assert
    assert len(problems) == 1
    assert repr(key) in problems[0] and repr(value) in problems[0] and "expects" in problems[0]


def test_from_run_config_collects_all_problems_in_one_error() -> None:
    # Prepare: an unknown key, a wrong type, and out-of-range values in three nested configs and the top level
    run_config = {
        "num-client": 3,
        "batch-size": "big",
        "keep-ratio": 2.0,
        "num-clients": 0,
        "unlearn-lr": -1.0,
        "fraction-train": 0.0,
        "backdoor-trigger-size": 99,
    }

    # Execute
    problems = _problems(FederationConfig.from_run_config, run_config=run_config)

    # Assert
    text = "\n".join(problems)
    assert "unknown run-config key 'num-client'" in text and "num-clients" in text  # lists known keys
    assert "'batch-size' expects int, got 'big'" in text
    assert "keep_ratio must be in (0.0, 1.0], got 2.0" in text
    assert "num_clients must be >= 1, got 0" in text
    assert "lr must be > 0, got -1.0" in text
    assert "fraction_train must be in (0.0, 1.0], got 0.0" in text
    assert "trigger_size must be in [1, 14], got 99" in text
    assert len(problems) == 7


def test_top_level_checks_use_valid_nested_values_when_a_nested_config_fails() -> None:
    # Prepare: data has one bad field, but its valid num-clients=8 must still count for the backdoor check
    run_config = {"num-clients": 8, "dirichlet-alpha": -1.0, "backdoor-client": 6}

    # Execute
    problems = _problems(FederationConfig.from_run_config, run_config=run_config)

    # Assert
    assert problems == ["dirichlet_alpha must be > 0, got -1.0"]


@pytest.mark.parametrize(
    "config",
    [
        FederationConfig(),
        FederationConfig(
            num_rounds=2,
            seed=11,
            out_dir="/tmp/out",
            retrain_mode=True,
            deletion_schedule="1:0:client",
            data=DataConfig(dataset="organamnist", root="/d", partition="dirichlet", samples_per_client=50),
            train=TrainConfig(model="mlp", lr=0.3),
            history=HistoryConfig(keep_ratio=1.0, value_dtype="float16"),
            unlearn=UnlearnConfig(method="sfr_on", target_fa=0.2),
            backdoor=BackdoorConfig(client=1),
        ),
    ],
    ids=["defaults", "custom"],
)
def test_to_run_config_from_run_config_round_trip(config: FederationConfig) -> None:
    # Execute
    flat = config.to_run_config()
    restored = FederationConfig.from_run_config(flat)

    # Assert
    assert restored == config
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert all(k == k.lower() and "_" not in k for k in flat)


def test_to_run_config_leaves_out_none_values() -> None:
    # Execute
    flat = FederationConfig().to_run_config()

    # Assert
    assert "out-dir" not in flat and "data-root" not in flat and "unlearn-max-steps" not in flat
    assert flat["num-server-rounds"] == 3 and flat["keep-ratio"] == HistoryConfig().keep_ratio


def test_from_run_config_works_for_a_single_nested_type() -> None:
    # Execute
    history = from_run_config(HistoryConfig, {"keep-ratio": 0.3, "history-dtype": "float16"})

    # Assert
    assert history == HistoryConfig(keep_ratio=0.3, value_dtype="float16")


def _toml_table(flat: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else repr(v)

    return "[tool.flwr.app.config]\n" + "\n".join(f"{k} = {value(v)}" for k, v in flat.items())


def test_pyproject_flwr_app_config_mirrors_dataclass_defaults() -> None:
    # Prepare: unset (None) keys appear as "" so that `flwr run --run-config` may set them.
    expected = FederationConfig().to_run_config(include_unset=True)

    # Execute
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    table = pyproject.get("tool", {}).get("flwr", {}).get("app", {}).get("config")

    # Assert
    assert table is not None, f"pyproject.toml has no [tool.flwr.app.config]; expected:\n{_toml_table(expected)}"
    missing = sorted(set(expected) - set(table))
    extra = sorted(set(table) - set(expected))
    differ = {k: (table[k], expected[k]) for k in set(table) & set(expected) if table[k] != expected[k]}
    assert (missing, extra, differ) == ([], [], {}), "pyproject [tool.flwr.app.config] differs from the defaults"
    assert FederationConfig.from_run_config(table) == FederationConfig()


# --------------------------------------------------------------------------- node config


def test_node_config_parses_flower_node_config() -> None:
    # Execute
    node = NodeConfig.from_node_config({"partition-id": "2", "num-partitions": 5, "state-dir": "/s", "data-root": "/d"})
    bare = NodeConfig.from_node_config({"partition-id": 0, "num-partitions": 1})

    # Assert
    assert node == NodeConfig(partition_id=2, num_partitions=5, state_dir="/s", data_root="/d")
    assert bare.state_dir is None and bare.data_root is None
    assert node.resolved_state_dir(FederationConfig()) == "/s"
    assert bare.resolved_state_dir(FederationConfig(state_root="/runs/x")) == "/runs/x/client-0"


def test_node_config_missing_keys_are_named_with_the_fix() -> None:
    # Execute
    problems = _problems(NodeConfig.from_node_config, node_config={"state-dir": "/s"})

    # Assert
    assert "partition-id" in problems[0] and "num-partitions" in problems[0] and "--node-config" in problems[0]


@pytest.mark.parametrize(
    ("node_config", "fragment"),
    [
        ({"partition-id": 5, "num-partitions": 5}, "partition-id must be in [0, 5), got 5"),
        ({"partition-id": -1, "num-partitions": 2}, "partition-id must be in [0, 2), got -1"),
        ({"partition-id": 0, "num-partitions": 0}, "num-partitions must be >= 1, got 0"),
        ({"partition-id": "first", "num-partitions": 2}, "'partition-id' expects int, got 'first'"),
    ],
)
def test_node_config_rejects_bad_values(node_config: dict[str, Any], fragment: str) -> None:
    # Execute
    problems = _problems(NodeConfig.from_node_config, node_config=node_config)

    # Assert
    assert any(fragment in p for p in problems), problems
