"""Deletion schedules for simulations: "at round r, client k deletes ...".

A schedule is a ``;``-separated list of ``ROUND:CLIENT:KIND[:ARG]`` entries:

- ``3:1:sample:0.1``  — after round 3, client 1 deletes a seeded random 10% of its samples
  (an integer ARG >= 1 is a count instead of a fraction);
- ``3:2:class:7``     — after round 3, client 2 deletes all its samples of class 7;
- ``3:4:client``      — after round 3, client 4 leaves and everything it contributed goes.

The owning client turns its own entries into ordinary deletion requests (with ids derived
from the entry, so re-applying a schedule never queues a request twice): deletion is still
requested through the owning node only. The retrain baseline (RT) excludes the same samples
from round 1 instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedunlearn.deletion import DeletionRequest
from fedunlearn.errors import ConfigError
from fedunlearn.types import DeletionKind, SampleIds


@dataclass(frozen=True)
class ScheduledDeletion:
    """One schedule entry; ``amount`` is a fraction (< 1) or a count (>= 1) for ``sample``."""

    round: int
    partition_id: int
    kind: DeletionKind
    amount: float | None = None
    label: int | None = None

    @property
    def request_id(self) -> str:
        """Deterministic id: the same entry always maps to the same request."""
        arg = self.label if self.kind == "class" else self.amount
        return f"sched-r{self.round}-c{self.partition_id}-{self.kind}-{arg}".replace(".", "p")

    def select_ids(self, candidates: SampleIds, labels: np.ndarray, *, seed: int) -> SampleIds:
        """The ids this entry deletes among a client's ``candidates`` (deterministic)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if self.kind == "client":
            return candidates
        if self.kind == "class":
            selected: SampleIds = candidates[np.asarray(labels) == self.label]
            return selected
        assert self.amount is not None
        count = int(self.amount) if self.amount >= 1 else max(1, int(round(self.amount * len(candidates))))
        rng = np.random.default_rng([seed, self.round, self.partition_id, 7919])
        return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))

    def to_request(self, sample_ids: SampleIds) -> DeletionRequest:
        """The deletion request the client files for this entry (ids resolved locally)."""
        ids = sample_ids.tolist() if self.kind == "sample" else ()
        return DeletionRequest.new(kind=self.kind, sample_ids=ids, label=self.label, request_id=self.request_id)


def parse_schedule(text: str, *, num_clients: int | None = None) -> tuple[ScheduledDeletion, ...]:
    """Parse a schedule string; all malformed entries are reported in one ConfigError."""
    entries, problems = [], []
    for raw in (part.strip() for part in text.split(";")):
        if not raw:
            continue
        try:
            entries.append(_parse_entry(raw, num_clients))
        except (ValueError, IndexError) as err:
            problems.append(
                f"deletion-schedule entry {raw!r}: {err}; expected ROUND:CLIENT:KIND[:ARG], e.g. '3:1:sample:0.1'"
            )
    if problems:
        raise ConfigError(problems)
    return tuple(entries)


def _parse_entry(raw: str, num_clients: int | None) -> ScheduledDeletion:
    parts = raw.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"{len(parts)} fields")
    server_round, partition_id, kind = int(parts[0]), int(parts[1]), parts[2]
    if server_round < 1 or partition_id < 0 or (num_clients is not None and partition_id >= num_clients):
        raise ValueError(f"round must be >= 1 and client in [0, {num_clients}), got {server_round}, {partition_id}")
    if kind == "sample":
        amount = float(parts[3]) if len(parts) == 4 else 0.1
        if amount <= 0 or (amount >= 1 and not amount.is_integer()):
            raise ValueError(f"sample ARG must be a fraction in (0, 1) or a count >= 1, got {parts[3]}")
        return ScheduledDeletion(server_round, partition_id, "sample", amount=amount)
    if kind == "class":
        if len(parts) != 4 or int(parts[3]) < 0:
            raise ValueError("class needs a label >= 0 as ARG")
        return ScheduledDeletion(server_round, partition_id, "class", label=int(parts[3]))
    if kind == "client":
        if len(parts) != 3:
            raise ValueError("client takes no ARG")
        return ScheduledDeletion(server_round, partition_id, "client")
    raise ValueError(f"unknown kind {kind!r} (sample, class, client)")
