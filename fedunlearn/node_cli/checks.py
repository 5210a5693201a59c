"""Offline checks of a deletion request against what the node's state directory records.

A node writes ``site.json`` (dataset, partition, per-class counts), ``sample_ids.npy`` and
``sample_labels.npy`` when it first serves a run (``ClientSite._write_site_files``), and keeps
every request under ``requests/``. ``plan_request`` turns the data officer's input into a
``DeletionRequest`` only if nothing is wrong with it; otherwise it raises one
``DeletionRequestError`` that lists every problem (with the id file's line numbers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedunlearn.deletion import MAX_REQUEST_IDS, DeletionQueue, DeletionRequest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.site import SAMPLE_IDS_FILE, SAMPLE_LABELS_FILE, SITE_FILE
from fedunlearn.types import SampleIds

#: At most this many offending ids are named per problem.
MAX_SHOWN = 10
_INT64_MAX = np.iinfo(np.int64).max
_NON_NEGATIVE = re.compile(r"\+?\d+")
_NEGATIVE = re.compile(r"-\d+")


@dataclass(frozen=True)
class IdList:
    """Sample ids read from a file, with the line each came from (for error messages)."""

    ids: tuple[int, ...]
    lines: tuple[int, ...]
    source: str

    def describe(self, ids: Iterable[int]) -> str:
        """``"17 (line 3), 42 (line 9) ... and 5 more"`` for the given ids."""
        line_of = dict(zip(self.ids, self.lines, strict=True))
        chosen = list(ids)
        shown = ", ".join(f"{i} (line {line_of[i]})" for i in chosen[:MAX_SHOWN])
        return shown + (f" ... and {len(chosen) - MAX_SHOWN} more" if len(chosen) > MAX_SHOWN else "")


def parse_id_lines(lines: Iterable[str], *, source: str) -> IdList:
    """One non-negative integer id per line; ``#`` starts a comment; blank lines are skipped.

    Raises DeletionRequestError listing every bad line (not an integer, negative, beyond
    int64, a repeat of an earlier line) or saying that the input holds no id at all.
    """
    ids: list[int] = []
    numbers: list[int] = []
    first_line: dict[int, int] = {}
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        problem = _line_problem(text, first_line)
        if problem:
            problems.append(f"{source} line {number}: {problem}")
            continue
        value = int(text)
        first_line[value] = number
        ids.append(value)
        numbers.append(number)
    if len(ids) > MAX_REQUEST_IDS:
        problems.append(f"{source} names {len(ids)} ids; a request may name at most {MAX_REQUEST_IDS}")
    if problems:
        raise problems_error(problems)
    if not ids:
        raise DeletionRequestError(
            f"{source} holds no sample ids (only blank lines or # comments); write one integer sample id per line"
        )
    return IdList(tuple(ids), tuple(numbers), source)


def _line_problem(text: str, first_line: dict[int, int]) -> str | None:
    if _NEGATIVE.fullmatch(text):
        return f"{text!r} is negative; sample ids are >= 0"
    if not _NON_NEGATIVE.fullmatch(text):
        return f"{text!r} is not an integer sample id (one id per line, # for comments)"
    value = int(text)
    if value > _INT64_MAX:
        return f"{text!r} is larger than any sample id (max {_INT64_MAX})"
    if value in first_line:
        return f"id {value} repeats line {first_line[value]}; list each id once"
    return None


def problems_error(problems: Sequence[str]) -> DeletionRequestError:
    """One error carrying every problem (one per line, as ConfigError does)."""
    if len(problems) == 1:
        return DeletionRequestError(problems[0])
    return DeletionRequestError(f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class SiteRecord:
    """What a node recorded about its own data: ids, labels (if recorded) and ``site.json``."""

    state_dir: Path
    info: dict[str, Any]
    sample_ids: SampleIds
    labels: np.ndarray | None

    @staticmethod
    def load(state_dir: Path) -> SiteRecord | None:
        """Read the record of ``state_dir``; None when the node never wrote one (no ``site.json``)."""
        site_path = state_dir / SITE_FILE
        if not site_path.exists():
            return None
        try:
            info = json.loads(site_path.read_text(encoding="utf-8"))
            ids = np.load(state_dir / SAMPLE_IDS_FILE, allow_pickle=False).astype(np.int64)
            labels_path = state_dir / SAMPLE_LABELS_FILE
            labels = np.load(labels_path, allow_pickle=False).astype(np.int64) if labels_path.exists() else None
        except (OSError, ValueError) as err:
            raise DeletionRequestError(
                f"cannot read the site files in {state_dir} ({err}); restart the node once so that it rewrites them"
            ) from err
        if labels is not None and len(labels) != len(ids):
            labels = None  # written by another run's layout; fall back to the counts in site.json
        return SiteRecord(state_dir, info, ids, labels)

    def describe(self) -> str:
        """``partition 1 of mnist, 500 samples`` for messages."""
        return (
            f"partition {self.info.get('partition_id')} of {self.info.get('dataset')}, {len(self.sample_ids)} samples"
        )

    def class_counts(self) -> dict[int, int]:
        """Count samples per label as the node recorded them."""
        if self.labels is not None:
            values, counts = np.unique(self.labels, return_counts=True)
            return {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        return {int(k): int(v) for k, v in dict(self.info.get("class_counts", {})).items()}


@dataclass(frozen=True)
class QueueView:
    """The node's earlier requests (read-only: reading never creates folders)."""

    requests: tuple[DeletionRequest, ...]
    forgotten: SampleIds

    @staticmethod
    def load(state_dir: Path) -> QueueView:
        """Read the requests of ``state_dir`` (none if it has no ``requests/`` folder)."""
        if not (state_dir / "requests").is_dir():
            return QueueView((), np.empty(0, np.int64))
        queue = DeletionQueue(state_dir)
        return QueueView(tuple(queue.all()), queue.forgotten_ids())

    def pending(self) -> list[DeletionRequest]:
        """Return the requests not served yet."""
        return [r for r in self.requests if r.status == "pending"]


def plan_request(
    state_dir: Path,
    *,
    samples: IdList | None = None,
    label: int | None = None,
    everything: bool = False,
    request_id: str | None = None,
    unchecked: bool = False,
) -> DeletionRequest:
    """Build the request the data officer asked for, if it passes every check (writes nothing).

    Exactly one of ``samples``, ``label`` or ``everything`` selects the kind. Without a
    ``site.json`` the directory is not a node's state directory (a typo would queue a request
    no node ever serves), so that is an error unless ``unchecked`` is set.
    """
    if sum([samples is not None, label is not None, everything]) != 1:
        raise DeletionRequestError("choose exactly one of --samples FILE, --class N or --all")
    site = SiteRecord.load(state_dir)
    if site is None and not unchecked:
        raise DeletionRequestError(
            f"{state_dir} has no {SITE_FILE}: it is not the state directory of a node that has joined a run. "
            "Check --state-dir (the SuperNode's node-config state-dir), or pass --unchecked to queue the request "
            "anyway (the node then validates it when it serves it)"
        )
    queue = QueueView.load(state_dir)
    problems = _common_problems(queue, request_id)
    if samples is not None:
        problems += sample_problems(site, samples, queue)
        kind, ids = "sample", samples.ids
    elif label is not None:
        problems += class_problems(site, label, queue)
        kind, ids = "class", ()
    else:
        kind, ids = "client", ()
    if problems:
        raise problems_error(problems)
    return DeletionRequest.new(kind=kind, sample_ids=ids, label=label, request_id=request_id)  # type: ignore[arg-type]


def _common_problems(queue: QueueView, request_id: str | None) -> list[str]:
    problems = []
    if request_id is not None:
        if not request_id or not all(c.isalnum() or c in "-_" for c in request_id):
            problems.append(f"--request-id must be letters, digits, - or _; got {request_id!r}")
        elif any(r.request_id == request_id for r in queue.requests):
            problems.append(f"a request with id {request_id!r} already exists; choose another --request-id")
    for request in queue.requests:
        if request.kind == "client":
            state = "pending" if request.status == "pending" else "served (this node left the federation)"
            problems.append(
                f"client-level request {request.request_id} is already {state}: it covers everything this node holds"
            )
    return problems


def sample_problems(site: SiteRecord | None, samples: IdList, queue: QueueView) -> list[str]:
    """Find ids the node does not hold, ids already forgotten, ids already in a pending request."""
    ids = np.asarray(samples.ids, dtype=np.int64)
    problems = []
    if site is not None:
        unknown = ids[~np.isin(ids, site.sample_ids)]
        if len(unknown):
            problems.append(
                f"{len(unknown)} id(s) are not held by this node ({site.describe()}): "
                f"{samples.describe(unknown.tolist())}; use ids listed in {site.state_dir / SAMPLE_IDS_FILE}"
            )
    again = ids[np.isin(ids, queue.forgotten)]
    if len(again):
        problems.append(
            f"{len(again)} id(s) were already forgotten (served requests): {samples.describe(again.tolist())}"
        )
    for request in queue.pending():
        if request.kind == "class" and site is not None and site.labels is not None:
            of_class = site.sample_ids[site.labels == request.label]
            overlap = ids[np.isin(ids, of_class)]
            covered = f"class {request.label}, which pending request {request.request_id} forgets"
        else:
            overlap = ids[np.isin(ids, np.asarray(request.sample_ids, dtype=np.int64))]
            covered = f"pending request {request.request_id}"
        if len(overlap):
            problems.append(
                f"{len(overlap)} id(s) are already covered by {covered}: {samples.describe(overlap.tolist())}"
            )
    return problems


def class_problems(site: SiteRecord | None, label: int, queue: QueueView) -> list[str]:
    """Find a label outside the dataset, a class the node does not hold (any more), a repeat."""
    if label < 0:
        return [f"--class must be a label >= 0, got {label}"]
    problems = [
        f"class {label} is already requested in pending request {r.request_id}"
        for r in queue.pending()
        if r.kind == "class" and r.label == label
    ]
    if site is None:
        return problems
    num_classes = int(site.info.get("num_classes", 0))
    counts = site.class_counts()
    held = ", ".join(f"{k} ({v})" for k, v in sorted(counts.items()))
    if num_classes and label >= num_classes:
        return problems + [f"class {label} does not exist in {site.info.get('dataset')} (labels 0..{num_classes - 1})"]
    if counts.get(label, 0) == 0:
        return problems + [f"this node holds no samples of class {label}; classes held (count): {held}"]
    if site.labels is not None:
        remaining = site.sample_ids[(site.labels == label) & ~np.isin(site.sample_ids, queue.forgotten)]
        if len(remaining) == 0:
            problems.append(f"all {counts[label]} samples of class {label} on this node were already forgotten")
    return problems
