"""Deletion schedules for simulations: "at round r, client k deletes ...".

A schedule is a ``;``-separated list of ``ROUND:CLIENT:KIND[:ARG]`` entries (whitespace
around each field is ignored):

- ``3:1:sample:0.1``  — after round 3, client 1 deletes a seeded random 10% of its samples
  (ARG is a fraction in (0, 1), or a whole count >= 1 such as ``20`` or ``2e3``; default 0.1);
- ``3:2:class:7``     — after round 3, client 2 deletes all its samples of class 7;
- ``3:4:client``      — after round 3, client 4 leaves and everything it contributed goes;
- ``3:1:corrupted``   — after round 3, client 1 deletes exactly the records an experiment
  corrupted on it (``experiment.corrupt-*``: poisoned or mislabelled records), as a
  sample-level request.

The owning client turns its own entries into ordinary deletion requests (with ids derived
from the entry, so re-applying a schedule never queues a request twice): deletion is still
requested through the owning node only. The retrain baseline (RT) excludes the same samples
from round 1 instead. Every problem is found when the schedule is parsed (the run config is
read), not rounds later inside a client: non-finite or out-of-range numbers, and an entry
that repeats another (the same request twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fedunlearn.deletion import DELETION_KINDS, MAX_REQUEST_IDS, DeletionRequest
from fedunlearn.errors import ConfigError
from fedunlearn.receipts import is_int
from fedunlearn.types import DeletionKind, SampleIds

FORMAT_HINT = "expected ROUND:CLIENT:KIND[:ARG], e.g. '3:1:sample:0.1'"
#: Schedule kinds: the deletion kinds, and ``corrupted`` (a sample-level request for the
#: client's corrupted records).
SCHEDULE_KINDS: tuple[str, ...] = (*DELETION_KINDS, "corrupted")
#: The fraction a ``sample`` entry without ARG deletes.
DEFAULT_FRACTION = 0.1


@dataclass(frozen=True)
class ScheduledDeletion:
    """One schedule entry; ``amount`` is a fraction (< 1) or a count (>= 1) for ``sample``.

    Validated on construction (ConfigError naming the field), so an entry built in code
    obeys the same rules as a parsed one.

    >>> ScheduledDeletion(3, 1, "sample", amount=0.1).request_id
    'sched-r3-c1-sample-0p1'
    """

    round: int
    partition_id: int
    kind: DeletionKind | Literal["corrupted"]
    amount: float | None = None
    label: int | None = None

    def __post_init__(self) -> None:
        problems = entry_problems(
            round=self.round, partition_id=self.partition_id, kind=self.kind, amount=self.amount, label=self.label
        )
        if problems:
            raise ConfigError(f"invalid scheduled deletion {self.text}: {'; '.join(problems)}")

    @property
    def request_id(self) -> str:
        """Deterministic id: the same entry always maps to the same request."""
        arg = self.label if self.kind == "class" else self.amount
        return f"sched-r{self.round}-c{self.partition_id}-{self.kind}-{arg}".replace(".", "p")

    @property
    def text(self) -> str:
        """The entry as a schedule would write it (for messages)."""
        arg: object = {"sample": self.amount, "class": self.label}.get(self.kind)
        if isinstance(arg, float) and arg.is_integer():
            arg = int(arg)
        return f"'{self.round}:{self.partition_id}:{self.kind}" + (f":{arg}'" if arg is not None else "'")

    def sample_count(self, held: int) -> int:
        """How many of the ``held`` samples a ``sample`` entry deletes.

        A count larger than what the client holds is a mistake (``sample:1e9`` is not
        "everything"), so it raises ConfigError naming both numbers instead of clamping.
        """
        if self.amount is None:
            raise ConfigError(f"scheduled deletion {self.text} is {self.kind}-level: it has no sample count")
        count = int(self.amount) if self.amount >= 1 else max(1, int(round(self.amount * held)))
        if count > held:
            raise ConfigError(
                f"deletion-schedule entry {self.text} deletes {count} samples, but client {self.partition_id} "
                f"holds {held}; use a count <= {held}, a fraction in (0, 1), or 'client' to delete everything"
            )
        return count

    def select_ids(
        self, candidates: SampleIds, labels: np.ndarray, *, seed: int, corrupted: SampleIds | None = None
    ) -> SampleIds:
        """The ids this entry deletes among a client's ``candidates`` (deterministic);
        ``corrupted``: the client's corrupted records (what a ``corrupted`` entry deletes)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if self.kind == "corrupted":
            if corrupted is None or len(corrupted) == 0:
                raise ConfigError(
                    f"scheduled deletion {self.text}: client {self.partition_id} has no corrupted records"
                )
            return np.sort(np.asarray(corrupted, dtype=np.int64))
        if self.kind == "client":
            return candidates
        if self.kind == "class":
            selected: SampleIds = candidates[np.asarray(labels) == self.label]
            return selected
        count = self.sample_count(len(candidates))
        rng = np.random.default_rng([seed, self.round, self.partition_id, 7919])
        return np.sort(rng.choice(candidates, size=count, replace=False))

    def to_request(self, sample_ids: SampleIds) -> DeletionRequest:
        """The deletion request the client files for this entry (ids resolved locally)."""
        kind: DeletionKind = "sample" if self.kind == "corrupted" else self.kind
        ids = sample_ids.tolist() if kind == "sample" else ()
        return DeletionRequest.new(kind=kind, sample_ids=ids, label=self.label, request_id=self.request_id)


def entry_problems(*, round: int, partition_id: int, kind: str, amount: float | None, label: int | None) -> list[str]:
    """What is wrong with an entry's values, each naming its field (ROUND, CLIENT, KIND, ARG)."""
    problems = []
    if not is_int(round) or round < 1:
        problems.append(f"ROUND must be an integer >= 1, got {round!r}")
    if not is_int(partition_id) or partition_id < 0:
        problems.append(f"CLIENT must be an integer >= 0, got {partition_id!r}")
    if kind not in SCHEDULE_KINDS:
        return problems + [f"KIND must be one of {', '.join(SCHEDULE_KINDS)}; got {kind!r}"]
    if kind == "sample":
        problems += _amount_problems(amount)
    elif amount is not None:
        problems.append(f"{kind} takes no sample amount, got {amount!r}")
    if kind == "class" and (not is_int(label) or label < 0):  # type: ignore[operator]
        problems.append(f"class ARG must be a label (an integer >= 0), got {label!r}")
    if kind != "class" and label is not None:
        problems.append(f"{kind} takes no label, got {label!r}")
    return problems


def _amount_problems(amount: float | None) -> list[str]:
    if not isinstance(amount, (int, float, np.floating, np.integer)) or isinstance(amount, bool):
        return [f"sample ARG must be a number, got {amount!r}"]
    if not math.isfinite(amount):
        return [f"sample ARG must be a finite number, got {amount}"]
    if amount <= 0 or (amount >= 1 and not float(amount).is_integer()):
        return [f"sample ARG must be a fraction in (0, 1) or a whole count >= 1, got {amount}"]
    if amount > MAX_REQUEST_IDS:
        return [f"sample ARG asks for {amount:.0f} samples; a request may name at most {MAX_REQUEST_IDS}"]
    return []


def parse_schedule(text: str, *, num_clients: int | None = None) -> tuple[ScheduledDeletion, ...]:
    """Parse a schedule string; all malformed or repeated entries are reported in one ConfigError.

    Two entries that map to the same request id (``1:0:sample:3`` and ``1:0:sample:3.0``)
    would file one request twice; the repeat is refused here, naming both entries.
    """
    entries: list[ScheduledDeletion] = []
    problems: list[str] = []
    first: dict[str, str] = {}
    for raw in (part.strip() for part in text.split(";")):
        if not raw:
            continue
        try:
            entry = _parse_entry(raw, num_clients)
        except ValueError as err:  # ConfigError is a ValueError too
            problems.append(f"deletion-schedule entry {raw!r}: {err}; {FORMAT_HINT}")
            continue
        if entry.request_id in first:
            problems.append(
                f"deletion-schedule entry {raw!r} repeats entry {first[entry.request_id]!r} (both are request "
                f"{entry.request_id}); list each deletion once"
            )
            continue
        first[entry.request_id] = raw
        entries.append(entry)
    if problems:
        raise ConfigError(problems)
    return tuple(entries)


def _parse_entry(raw: str, num_clients: int | None) -> ScheduledDeletion:
    """One entry; ValueError names the field that is wrong."""
    fields = [part.strip() for part in raw.split(":")]
    if len(fields) not in (3, 4):
        raise ValueError(f"has {len(fields)} fields")
    server_round = _integer("ROUND must be an integer >= 1", fields[0])
    partition_id = _integer("CLIENT must be an integer >= 0", fields[1])
    if num_clients is not None and 0 <= partition_id and partition_id >= num_clients:
        raise ValueError(f"CLIENT must be in [0, {num_clients}), got {partition_id}")
    kind, arg = fields[2], (fields[3] if len(fields) == 4 else None)
    amount, label = None, None
    if kind == "sample":
        amount = DEFAULT_FRACTION if arg is None else _number("sample ARG must be a number", arg)
    elif kind == "class":
        if arg is None:
            raise ValueError("class needs ARG, the label to delete")
        label = _integer("class ARG must be a label (an integer >= 0)", arg)
    elif kind in ("client", "corrupted") and arg is not None:
        raise ValueError(f"{kind} takes no ARG, got {arg!r}")
    problems = entry_problems(round=server_round, partition_id=partition_id, kind=kind, amount=amount, label=label)
    if problems:
        raise ValueError("; ".join(problems))
    return ScheduledDeletion(server_round, partition_id, kind, amount=amount, label=label)  # type: ignore[arg-type]


def _integer(problem: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{problem}, got {text!r}") from None


def _number(problem: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{problem} (a fraction in (0, 1) or a whole count >= 1), got {text!r}") from None
