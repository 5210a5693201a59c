"""The run config in sections: defaults, range checks, Flower's dotted keys, method settings,
clear errors for old flat keys, the node config, and the pyproject mirror."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import flatten_dict, unflatten_dict

from fedunlearn.config import (
    DataConfig,
    ExperimentConfig,
    FederationConfig,
    HistoryConfig,
    NodeConfig,
    RunSettings,
    TrainConfig,
    UnlearnConfig,
)
from fedunlearn.config.legacy import LEGACY_KEYS
from fedunlearn.errors import ConfigError
from fedunlearn.run_config import config_from_sections, config_to_flat
from fedunlearn.unlearning import available_methods, get_method, method_settings

REPO = Path(__file__).resolve().parents[2]
SECTIONS = (RunSettings, DataConfig, TrainConfig, HistoryConfig, UnlearnConfig, ExperimentConfig, FederationConfig)


def parse(flat: dict[str, Any]) -> FederationConfig:
    return config_from_sections(unflatten_dict(flat))


def problems_of(flat: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(flat)
    return caught.value.problems


@pytest.mark.parametrize("section", SECTIONS, ids=lambda t: t.__name__)
def test_defaults_are_valid_and_frozen(section: type) -> None:
    config = section()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.__setattr__(dataclasses.fields(config)[0].name, None)


@pytest.mark.parametrize("name", available_methods())
def test_every_method_has_valid_default_settings(name: str) -> None:
    spec = get_method(name)
    assert isinstance(spec.defaults(), spec.settings_type)
    assert spec.defaults().outer_steps >= 1


# Each case: one bad dotted key and the fragments its message must name (key, value, range).
RANGE_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"data.num-clients": 0}, ["data.num-clients", ">= 1", "got 0"]),
    ({"data.partition": "shards"}, ["data.partition", "iid, dirichlet, by_class", "'shards'"]),
    ({"data.dirichlet-alpha": 0.0}, ["data.dirichlet-alpha", "> 0"]),
    ({"train.lr": math.nan}, ["train.lr", "finite", "nan"]),
    ({"train.momentum": 1.5}, ["train.momentum", "[0.0, 1.0]", "1.5"]),
    ({"train.fraction": 0.0}, ["train.fraction", "(0.0, 1.0]"]),
    ({"history.keep-ratio": 1.5}, ["history.keep-ratio", "(0.0, 1.0]", "1.5"]),
    ({"history.dtype": "int8"}, ["history.dtype", "float32, float16", "'int8'"]),
    ({"run.round-timeout": -1}, ["run.round-timeout", "> 0"]),
    ({"unlearn.max-ta-drop": 2.0}, ["unlearn.max-ta-drop", "2.0"]),
    ({"unlearn.sfr_on.iters": 0}, ["unlearn.sfr_on.iters", ">= 1", "got 0"]),
    ({"unlearn.partial_label_flip.select-ratio": 0.0}, ["unlearn.partial_label_flip.select-ratio", "(0.0, 1.0]"]),
    ({"unlearn.partial_amnesiac.outer-steps": 0}, ["unlearn.partial_amnesiac.outer-steps", ">= 1"]),
    ({"experiment.corrupt-kind": "noise"}, ["experiment.corrupt-kind", "trigger, mislabel", "'noise'"]),
]


@pytest.mark.parametrize(("flat", "fragments"), RANGE_CASES, ids=lambda c: str(c)[:40])
def test_each_range_check_names_the_dotted_key_value_and_range(flat: dict[str, Any], fragments: list[str]) -> None:
    text = " | ".join(problems_of(flat))
    for fragment in fragments:
        assert fragment in text


def test_one_config_reports_all_its_problems_together() -> None:
    found = problems_of({"train.lr": -1, "data.num-clients": 0, "unlearn.sfr_on.clip-norm": 0, "train.bogus": 1})
    assert len(found) == 4


def test_dotted_keys_fill_the_sections_and_method_settings() -> None:
    config = parse(
        {
            "train.rounds": "7",  # strings from --set are coerced
            "data.samples-per-client": "120",
            "history.record": "false",
            "unlearn.method": "sfr_on",
            "unlearn.sfr_on.iters": 30,
            "unlearn.partial_label_flip.lr": 0.2,
            "experiment.corrupt-client": 2,
        }
    )
    assert config.train.rounds == 7 and config.data.samples_per_client == 120 and config.history.enabled is False
    assert method_settings(config.unlearn).iters == 30  # the configured method's own settings
    assert method_settings(config.unlearn, "partial_label_flip").lr == 0.2
    assert method_settings(config.unlearn, "partial_amnesiac") == get_method("partial_amnesiac").defaults()
    assert config.experiment.corrupt_client == 2


def test_an_unknown_method_is_refused_listing_the_registered_ones() -> None:
    (problem,) = problems_of({"unlearn.method": "nonexistent"})
    assert "nonexistent" in problem
    for name in ("partial_amnesiac", "partial_label_flip", "sfr_on", "none"):
        assert name in problem


def test_unknown_keys_and_sections_are_refused_listing_the_known_ones() -> None:
    found = " | ".join(problems_of({"train.speed": 1, "unlearn.bogus.x": 1, "nonsection": 2}))
    assert "train.speed" in found and "local-epochs" in found
    assert "unlearn.bogus" in found and "sfr_on" in found
    assert "'nonsection'" in found and "train.lr" in found


@pytest.mark.parametrize("old", sorted(LEGACY_KEYS))
def test_every_old_flat_key_names_its_new_key(old: str) -> None:
    (problem,) = problems_of({old: "1"})
    assert repr(old) in problem and LEGACY_KEYS[old].split(" ")[0] in problem


@pytest.mark.parametrize(
    "config",
    [
        FederationConfig(),
        parse({"train.rounds": 9, "data.test-samples": 50, "unlearn.method": "sfr_on", "unlearn.sfr_on.iters": 12}),
        parse({"experiment.deletion-schedule": "2:0:sample:0.1", "run.out-dir": "x", "history.server-log": True}),
    ],
)
def test_flat_keys_round_trip_through_flowers_own_unflatten(config: FederationConfig) -> None:
    assert parse(config_to_flat(config)) == config
    assert parse(config_to_flat(config, include_unset=True)) == config


def test_pyproject_flwr_app_config_mirrors_the_defaults_in_sections() -> None:
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = flatten_dict(table)  # what Flower does with the sectioned tables
    assert flat == config_to_flat(FederationConfig(), include_unset=True)
    assert parse(flat) == FederationConfig()


def test_node_config_parses_flower_node_config() -> None:
    node = NodeConfig.from_node_config({"partition-id": 2, "num-partitions": 5, "state-dir": "/srv/s", "data-root": ""})
    assert (node.partition_id, node.num_partitions, node.state_dir, node.data_root) == (2, 5, "/srv/s", None)


@pytest.mark.parametrize(
    ("node_config", "fragment"),
    [
        ({"num-partitions": 3}, "partition-id"),
        ({"partition-id": 3, "num-partitions": 3}, "partition-id must be in [0, 3)"),
        ({"partition-id": "x", "num-partitions": 3}, "integers"),
    ],
)
def test_node_config_errors_name_the_key_and_the_fix(node_config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        NodeConfig.from_node_config(node_config)
    assert fragment in str(caught.value)
