"""Where run-config keys meet dataclass fields: one section at a time.

A section is a frozen dataclass; its keys are the fields in kebab-case (or the field's
``key`` metadata). ``build_section`` turns a ``{key: value}`` mapping (Flower's run-config
values, or strings from ``--set``) into the dataclass, collecting every problem;
``flatten_section`` goes back.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin

from fedunlearn.errors import ConfigError

T = TypeVar("T")
Scalar = bool | int | float | str

#: Fields that are not run-config keys (nested objects set another way).
_SKIP_FIELDS = frozenset({"settings"})


def section_keys(section_type: type) -> dict[str, tuple[str, Any]]:
    """Map each run-config key of a section to the field name and type it sets."""
    hints = typing.get_type_hints(section_type)
    keys: dict[str, tuple[str, Any]] = {}
    for f in dataclasses.fields(section_type):
        if f.name in _SKIP_FIELDS:
            continue
        keys[f.metadata.get("key", f.name.replace("_", "-"))] = (f.name, hints[f.name])
    return keys


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a run-config scalar to a field's type, or raise a ConfigError naming the key."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return coerce(name, value, next(a for a in get_args(hint) if a is not type(None)))
    if origin is typing.Literal:
        return str(value).strip()
    try:
        return _scalar(value, hint)
    except (TypeError, ValueError):
        expected = getattr(hint, "__name__", hint)
        raise ConfigError(f"run-config key {name!r} expects {expected}, got {value!r}") from None


def _scalar(value: Any, hint: Any) -> Any:
    if isinstance(value, str) and hint is not str:
        value = value.strip()
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError(value)
    if hint is int:
        number = float(value) if isinstance(value, (str, float)) else value
        if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
            raise ValueError(value)
        return int(number)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    return value


def build_section(
    section_type: type[T], values: Mapping[str, Any], *, prefix: str, extra: Mapping[str, Any] | None = None
) -> tuple[T | None, list[str]]:
    """Build one section from its ``{key: value}``; returns (the object or None, problems).

    ``prefix`` names the section in messages (``train.``); unknown keys are problems that
    list the section's keys. ``extra`` holds constructor arguments set another way.
    """
    keys = section_keys(section_type)
    problems: list[str] = []
    kwargs: dict[str, Any] = dict(extra or {})
    for name, raw in values.items():
        if isinstance(raw, Mapping):
            problems.append(f"'{prefix}{name}' is not a section; keys of '{prefix[:-1]}': {', '.join(sorted(keys))}")
        elif name not in keys:
            problems.append(
                f"unknown run-config key '{prefix}{name}'; keys of '{prefix[:-1]}': {', '.join(sorted(keys))}"
            )
        else:
            field_name, hint = keys[name]
            try:
                kwargs[field_name] = coerce(f"{prefix}{name}", raw, hint)
            except ConfigError as err:
                problems.extend(err.problems)
    try:
        built = section_type(**kwargs)
    except ConfigError as err:  # the range checks of the values that were readable
        return None, problems + [_prefixed(p, prefix) for p in err.problems]
    return (None, problems) if problems else (built, [])


def _prefixed(problem: str, prefix: str) -> str:
    """Name the section in a problem raised by a settings class that does not know it."""
    return problem if problem.startswith(prefix.split(".")[0]) else f"{prefix}{problem}"


def flatten_section(obj: Any, *, prefix: str, include_unset: bool = False) -> dict[str, Scalar]:
    """The ``{prefix + key: value}`` of a section (None left out, or ``""`` with ``include_unset``)."""
    flat: dict[str, Scalar] = {}
    for name, (field_name, _hint) in section_keys(type(obj)).items():
        value = getattr(obj, field_name)
        if value is not None:
            flat[prefix + name] = value
        elif include_unset:
            flat[prefix + name] = ""
    return flat
