"""Check a simulation's whole config against the real data before Ray starts.

The config dataclasses check each value on its own; this checks what needs the data: the
dataset loads, the model builds for it, every method is registered and can serve the
schedule's deletion kinds, and every schedule entry names a client, a class or a number
of samples that exists; and that Ray can start here at all (its unix sockets live under
``RAY_TMPDIR``, whose path must be short). All problems are reported at once (ConfigError).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from fedunlearn.config import FederationConfig
from fedunlearn.data import build_federated_data
from fedunlearn.errors import ConfigError, FedUnlearnError
from fedunlearn.models import build_model
from fedunlearn.schedule import ScheduledDeletion, parse_schedule
from fedunlearn.unlearning import get_method


def preflight(config: FederationConfig, *, methods: Sequence[str]) -> None:
    """Raise one ConfigError listing every problem of ``config`` served by ``methods``."""
    problems: list[str] = []
    try:
        data = build_federated_data(config.data, seed=config.seed)
    except FedUnlearnError as err:
        raise ConfigError(f"data: {err}") from None
    try:
        build_model(config.train.model, input_shape=data.bundle.input_shape, num_classes=data.num_classes)
    except FedUnlearnError as err:
        problems.append(f"train.model: {err}")
    entries = parse_schedule(config.experiment.deletion_schedule, num_clients=config.data.num_clients)
    problems += _late_entries(config, entries)
    for entry in entries:
        labels = data.client_train(entry.partition_id).labels.numpy()
        problems += _entry_problems(config, entry, labels, data.num_classes)
    for method in methods:
        try:
            kinds = get_method(method).traits.kinds
        except FedUnlearnError as err:
            problems.append(f"unlearn.method: {err}")
            continue
        wrong = sorted({e.kind for e in entries if e.kind in ("sample", "class", "client")} - set(kinds))
        if wrong:
            problems.append(f"method {method!r} serves {', '.join(sorted(kinds))} deletions, not {', '.join(wrong)}")
    problems += ray_socket_problems(os.environ)
    if problems:
        raise ConfigError(problems)


#: Linux's limit on a unix socket path, and what Ray appends to its temp dir for its longest
#: socket ("/ray/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store", a 7-digit pid).
_SOCKET_PATH_LIMIT = 107
_RAY_SOCKET_SUFFIX = len("/ray/session_2026-12-02_15-45-31_625637_1234567/sockets/plasma_store")


def ray_socket_problems(environ: Mapping[str, str]) -> list[str]:
    """Ray fails deep inside its start-up (and the simulation hangs) when its socket paths are too long."""
    root = environ.get("RAY_TMPDIR") or "/tmp"
    room = _SOCKET_PATH_LIMIT - _RAY_SOCKET_SUFFIX
    if len(root) <= room:
        return []
    return [f"RAY_TMPDIR={root!r} is {len(root)} characters; Ray's sockets need it at most {room}: use a shorter path"]


def _late_entries(config: FederationConfig, entries: Sequence[ScheduledDeletion]) -> list[str]:
    late = [e.text for e in entries if e.round > config.train.rounds]
    return [f"deletion-schedule entries after the last round {config.train.rounds}: {late}"] if late else []


def _entry_problems(
    config: FederationConfig, entry: ScheduledDeletion, labels: np.ndarray, num_classes: int
) -> list[str]:
    """What makes one entry impossible on its client's data."""
    if entry.kind == "class":
        assert entry.label is not None
        if entry.label >= num_classes:
            return [f"deletion-schedule {entry.text}: class {entry.label} does not exist ({num_classes} classes)"]
        if not (labels == entry.label).any():
            held = sorted(set(labels.tolist()))
            return [
                f"deletion-schedule {entry.text}: client {entry.partition_id} holds no class {entry.label} ({held})"
            ]
    if entry.kind == "sample":
        try:
            entry.sample_count(len(labels))
        except ConfigError as err:
            return list(err.problems)
    if entry.kind == "corrupted" and config.experiment.corrupt_client != entry.partition_id:
        return [
            f"deletion-schedule {entry.text}: client {entry.partition_id} has no corrupted records "
            f"(experiment.corrupt-client is {config.experiment.corrupt_client})"
        ]
    return []
