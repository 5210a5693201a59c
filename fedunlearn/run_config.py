"""The one bridge between Flower's run config and ``FederationConfig``: sections in, sections out.

Flower keeps the run config flat, with dots between sections (``unlearn.sfr_on.iters``).
The Flower apps unflatten it with Flower's own ``unflatten_dict`` and call
``config_from_sections``, which builds every section, each method's settings
(``unlearn.<method>.*``) included, and reports every problem at once, before any training.
``config_to_flat`` goes back (the record a server sends, the table ``pyproject.toml`` holds).

>>> config = config_from_sections({"train": {"rounds": 2}, "unlearn": {"sfr_on": {"iters": 30}}})
>>> config.train.rounds, method_settings(config.unlearn, "sfr_on").iters
(2, 30)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedunlearn.config import (
    DataConfig,
    ExperimentConfig,
    FederationConfig,
    HistoryConfig,
    MethodSettings,
    RunSettings,
    TrainConfig,
    UnlearnConfig,
)
from fedunlearn.config.keys import Scalar, build_section, flatten_section
from fedunlearn.config.legacy import LEGACY_KEYS, legacy_problems
from fedunlearn.errors import ConfigError, UnknownMethodError
from fedunlearn.unlearning import available_methods, get_method, method_settings

#: The plain sections (``unlearn`` is built apart: it holds the methods' sections).
SECTIONS: dict[str, type] = {
    "run": RunSettings,
    "data": DataConfig,
    "train": TrainConfig,
    "history": HistoryConfig,
    "experiment": ExperimentConfig,
}
ALL_SECTIONS = (*SECTIONS, "unlearn")

__all__ = ["ALL_SECTIONS", "config_from_sections", "config_to_flat", "method_settings"]


def config_from_sections(sections: Mapping[str, Any]) -> FederationConfig:
    """Build and check the whole config from its sections (Flower's unflattened run config).

    Raises one ConfigError listing every problem: old flat keys (naming their new key),
    unknown sections and keys (listing the known ones), wrong types and ranges, an unknown
    method (listing the registered ones) and invalid method settings.
    """
    problems = _top_level_problems(sections)
    built: dict[str, Any] = {}
    for name, section_type in SECTIONS.items():
        obj, found = build_section(section_type, _section(sections, name, problems), prefix=f"{name}.")
        problems += found
        built[name] = obj
    built["unlearn"], found = _unlearn_section(_section(sections, "unlearn", problems))
    problems += found
    try:  # the checks across sections, with defaults standing in for sections that failed
        config = FederationConfig(**{k: v for k, v in built.items() if v is not None})
    except ConfigError as err:
        problems += err.problems
    if problems:
        raise ConfigError(problems)
    return config


def _top_level_problems(sections: Mapping[str, Any]) -> list[str]:
    legacy = [k for k in sections if k in LEGACY_KEYS]
    unknown = [k for k in sections if k not in ALL_SECTIONS and k not in LEGACY_KEYS]
    problems = legacy_problems(legacy)
    problems += [
        f"unknown run-config key {k!r}: keys belong to a section ({', '.join(ALL_SECTIONS)}), e.g. 'train.lr'"
        for k in unknown
    ]
    return problems


def _section(sections: Mapping[str, Any], name: str, problems: list[str]) -> Mapping[str, Any]:
    value = sections.get(name, {})
    if not isinstance(value, Mapping):
        problems.append(f"run-config key {name!r} is a section, not a value: set '{name}.<key>' instead")
        return {}
    return value


def _unlearn_section(values: Mapping[str, Any]) -> tuple[UnlearnConfig | None, list[str]]:
    """``unlearn.*`` scalars plus one ``unlearn.<method>.*`` sub-section per configured method."""
    scalars = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
    problems: list[str] = []
    settings: dict[str, MethodSettings] = {}
    for name, sub in ((k, v) for k, v in values.items() if isinstance(v, Mapping)):
        if name not in available_methods():
            problems.append(f"unknown section 'unlearn.{name}'; method sections: {', '.join(available_methods())}")
            continue
        spec = get_method(name)
        obj, found = build_section(spec.settings_type, sub, prefix=f"unlearn.{name}.")
        problems += found
        if obj is not None and obj != spec.defaults():  # defaults are implied: equal configs compare equal
            settings[name] = obj
    config, found = build_section(UnlearnConfig, scalars, prefix="unlearn.", extra={"settings": settings})
    problems += found
    try:
        get_method(str(scalars.get("method", UnlearnConfig.method)).strip())
    except UnknownMethodError as err:
        problems.append(f"unlearn.method: {err}")
    return config, problems


def config_to_flat(config: FederationConfig, *, include_unset: bool = False) -> dict[str, Scalar]:
    """The flat dotted keys ``config_from_sections`` reads back (after ``unflatten_dict``).

    Every registered method's settings are written (its own or its defaults), so the result
    is also the full ``[tool.flwr.app.config]`` table (``include_unset`` writes None as
    ``""``: Flower only accepts ``--run-config`` overrides of keys the table declares).
    """
    flat: dict[str, Scalar] = {}
    for name in SECTIONS:
        flat.update(flatten_section(getattr(config, name), prefix=f"{name}.", include_unset=include_unset))
    flat.update(flatten_section(config.unlearn, prefix="unlearn.", include_unset=include_unset))
    for name in available_methods():
        settings = method_settings(config.unlearn, name)
        flat.update(flatten_section(settings, prefix=f"unlearn.{name}.", include_unset=include_unset))
    return flat
