"""Deletion requests, their durable queue on the client's disk, and deletion receipts.

A request is a legal promise (GDPR Art. 17): once accepted it is written atomically to
``<state dir>/requests/`` and stays there until it is served (a receipt is written) or
fails (the reason is kept and the request stays pending). Sample ids never leave the
client: receipts (``fedunlearn.receipts``) carry an HMAC of the ids keyed with a secret that
never leaves the node, and the server's copy carries no sample count.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from fedunlearn.atomic import save_npy_atomic, write_json_atomic
from fedunlearn.errors import DeletionRequestError
from fedunlearn.receipts import (
    NODE_SECRET_FILE,
    derive_receipt_key,
    ids_hmac,
    is_finite_number,
    is_int,
    load_node_secret,
)
from fedunlearn.receipts import DeletionReceipt as DeletionReceipt  # re-exported: receipts lived here before
from fedunlearn.receipts import ids_digest as ids_digest  # re-exported until every caller uses ids_hmac
from fedunlearn.types import DeletionKind, SampleIds

logger = logging.getLogger(__name__)

RequestStatus = Literal["pending", "served"]
DELETION_KINDS: tuple[str, ...] = get_args(DeletionKind)
MAX_REQUEST_IDS = 10_000_000
MAX_REQUEST_ID_CHARS = 128
MAX_SAMPLE_ID = int(np.iinfo(np.int64).max)


class UnknownRequestError(DeletionRequestError):
    """A request id this client's queue does not hold (e.g. one a server named on its own)."""

    def __init__(self, request_id: str, folder: Path) -> None:
        self.request_id = request_id
        super().__init__(f"no deletion request {request_id!r} in {folder}")


@dataclass(frozen=True)
class DeletionRequest:
    """What a data owner asked to forget on one client.

    ``sample_ids`` for kind ``sample``; ``label`` for kind ``class``; nothing for ``client``.
    ``attempts`` and ``last_error`` record failed serving attempts (the request stays pending).
    """

    request_id: str
    kind: DeletionKind
    sample_ids: tuple[int, ...] = ()
    label: int | None = None
    created_at: float = 0.0
    status: RequestStatus = "pending"
    attempts: int = 0
    last_error: str | None = None
    served_at: float | None = None

    def __post_init__(self) -> None:
        problems = request_problems(self.kind, self.sample_ids, self.label) + _record_problems(self)
        if problems:
            raise DeletionRequestError("; ".join(problems))

    @staticmethod
    def new(
        *, kind: DeletionKind, sample_ids: Iterable[int] = (), label: int | None = None, request_id: str | None = None
    ) -> DeletionRequest:
        """A fresh pending request (random id unless given; ids de-duplicated and sorted)."""
        ids = _clean_ids(sample_ids)
        return DeletionRequest(request_id or uuid.uuid4().hex[:16], kind, ids, label, time.time())

    def to_json(self) -> dict[str, Any]:
        """The request as a JSON object (what the queue writes)."""
        payload = asdict(self)
        payload["sample_ids"] = list(self.sample_ids)
        return payload

    @staticmethod
    def from_json(payload: dict[str, Any]) -> DeletionRequest:
        """Parse a stored request; a malformed record raises DeletionRequestError naming the field."""
        if not isinstance(payload, dict):
            kind = type(payload).__name__
            raise DeletionRequestError(f"malformed deletion request record: expected an object, got {kind}")
        problems = [f"unknown field {k!r}" for k in payload if k not in REQUEST_FIELDS]
        problems += [f"missing field {k!r}" for k in ("request_id", "kind") if k not in payload]
        ids = payload.get("sample_ids", [])
        if not isinstance(ids, list):
            problems.append(f"sample_ids must be a list of integers, got {type(ids).__name__}")
        if problems:
            raise DeletionRequestError(f"malformed deletion request record: {'; '.join(problems)}")
        return DeletionRequest(**{**payload, "sample_ids": tuple(ids)})


REQUEST_FIELDS = frozenset(f.name for f in fields(DeletionRequest))


def valid_request_id(request_id: object) -> bool:
    """Whether ``request_id`` is 1 to MAX_REQUEST_ID_CHARS letters, digits, ``-`` or ``_`` (a safe file name)."""
    return (
        isinstance(request_id, str)
        and 0 < len(request_id) <= MAX_REQUEST_ID_CHARS
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in request_id)
    )


def _record_problems(request: DeletionRequest) -> list[str]:
    """What makes the bookkeeping fields of a request invalid."""
    problems = []
    if not valid_request_id(request.request_id):
        problems.append(
            f"request id must be alphanumeric (ASCII, with - or _), 1-{MAX_REQUEST_ID_CHARS} characters; "
            f"got {request.request_id!r}"
        )
    if request.status not in get_args(RequestStatus):
        problems.append(f"status must be one of {', '.join(get_args(RequestStatus))}; got {request.status!r}")
    if not is_int(request.attempts) or request.attempts < 0:
        problems.append(f"attempts must be an integer >= 0, got {request.attempts!r}")
    if not is_finite_number(request.created_at):
        problems.append(f"created_at must be a finite number (a time stamp), got {request.created_at!r}")
    if request.served_at is not None and not is_finite_number(request.served_at):
        problems.append(f"served_at must be a finite number or null, got {request.served_at!r}")
    if request.last_error is not None and not isinstance(request.last_error, str):
        problems.append(f"last_error must be a string or null, got {request.last_error!r}")
    return problems


def _clean_ids(sample_ids: Iterable[int]) -> tuple[int, ...]:
    """Sorted unique ints; rejects non-integers, out-of-range ids and absurd sizes with clear errors."""
    if isinstance(sample_ids, (str, bytes, dict)) or not isinstance(sample_ids, Iterable):
        raise DeletionRequestError(f"sample ids must be a list of integers, got {type(sample_ids).__name__}")
    raw = list(itertools.islice(sample_ids, MAX_REQUEST_IDS + 1))
    if len(raw) > MAX_REQUEST_IDS:
        raise DeletionRequestError(f"a request may name at most {MAX_REQUEST_IDS} sample ids, got more")
    problems = _id_problems(raw)
    if problems:
        raise DeletionRequestError("; ".join(problems))
    ids = np.unique(np.asarray(raw, dtype=np.int64)) if raw else np.empty(0, np.int64)
    return tuple(int(v) for v in ids)


def _id_problems(ids: Sequence[object]) -> list[str]:
    bad = [v for v in ids if not is_int(v)]
    if bad:
        return [f"sample ids must be integers, got {bad[:5]!r}"]
    negative = [int(v) for v in ids if int(v) < 0]  # type: ignore[call-overload]
    if negative:
        return [f"sample ids must be >= 0, got {negative[:5]}"]
    huge = [int(v) for v in ids if int(v) > MAX_SAMPLE_ID]  # type: ignore[call-overload]
    if huge:
        return [f"sample ids must be <= {MAX_SAMPLE_ID} (int64), got {huge[:5]}"]
    return []


def request_problems(kind: str, sample_ids: Sequence[int], label: int | None) -> list[str]:
    """What makes a request malformed (independent of any client's data)."""
    if not isinstance(kind, str) or kind not in DELETION_KINDS:
        return [f"kind must be one of {', '.join(DELETION_KINDS)}; got {kind!r}"]
    if not isinstance(sample_ids, (tuple, list)):
        return [f"sample ids must be a list of integers, got {type(sample_ids).__name__}"]
    if kind == "sample" and len(sample_ids) == 0:
        return ["a sample-level request needs at least one sample id"]
    if kind != "sample" and len(sample_ids):
        return [f"a {kind}-level request takes no sample ids (got {len(sample_ids)})"]
    if len(sample_ids) > MAX_REQUEST_IDS:
        return [f"a request may name at most {MAX_REQUEST_IDS} sample ids, got {len(sample_ids)}"]
    problems = _id_problems(sample_ids)
    if problems:
        return problems
    if kind == "class" and (not is_int(label) or label < 0 or label > MAX_SAMPLE_ID):  # type: ignore[operator]
        return [f"a class-level request needs a label >= 0, got {label!r}"]
    if kind != "class" and label is not None:
        return [f"a {kind}-level request takes no label (got {label!r})"]
    return []


CHECKSUM_FIELD = "sha256"


def _body_sha256(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _load_ids(path: Path) -> SampleIds:
    """A ``.forgotten.npy`` file as int64 ids; a damaged file raises DeletionRequestError naming it."""
    try:
        ids: np.ndarray = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - a damaged header raises anything from ValueError to TokenError
        raise DeletionRequestError(f"{path} is damaged ({err}); restore it from backup") from err
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DeletionRequestError(f"{path} is damaged (expected a 1-d integer array, got {ids.dtype} {ids.shape})")
    result: SampleIds = ids.astype(np.int64)
    return result


def _check_checksum(path: Path, payload: dict[str, Any]) -> None:
    """Remove and verify a request record's checksum; a missing or wrong one means the file was edited."""
    if CHECKSUM_FIELD not in payload:
        raise DeletionRequestError(
            f"request file {path} has no {CHECKSUM_FIELD!r} checksum field, which every request the queue writes "
            "carries: it was edited or damaged; restore it from backup, or delete it and re-file the request "
            "(fedunlearn forget)"
        )
    expected = payload.pop(CHECKSUM_FIELD)
    if _body_sha256(payload) != expected:
        raise DeletionRequestError(
            f"request file {path} was modified or damaged: its content does not match its checksum "
            f"({str(expected)[:16]}...); restore it from backup"
        )


class DeletionQueue:
    """Requests of one client, one JSON file each under ``<state dir>/requests``.

    Every change is an atomic file replace, so a crash at any point leaves either the old
    or the new record, never a torn one; the resolved ids of a served request are kept
    (locally) so later training excludes them for good. The queue alone holds the node
    secret that keys receipts (``<state dir>/node-secret``, created by the first commit).
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / "requests"
        self.receipts_dir = self.state_dir / "receipts"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.receipts_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, request_id: str) -> Path:
        if not valid_request_id(request_id):
            raise DeletionRequestError(
                f"request id must be alphanumeric (ASCII, with - or _), "
                f"1-{MAX_REQUEST_ID_CHARS} characters; got {request_id!r}"
            )
        return self.dir / f"{request_id}.json"

    def submit(self, request: DeletionRequest) -> DeletionRequest:
        """Store a new pending request durably; raises if its id already exists."""
        path = self._path(request.request_id)
        if path.exists():
            raise DeletionRequestError(f"request {request.request_id} already exists in {self.dir}")
        self._write(request)
        logger.info("queued %s-level deletion request %s", request.kind, request.request_id)
        return request

    def _write(self, request: DeletionRequest) -> None:
        """Write a request file atomically, with a checksum of its content."""
        body = request.to_json()
        write_json_atomic(self._path(request.request_id), {**body, CHECKSUM_FIELD: _body_sha256(body)})

    def get(self, request_id: str) -> DeletionRequest:
        """The stored request; a damaged file raises DeletionRequestError naming it."""
        path = self._path(request_id)
        if not path.exists():
            raise UnknownRequestError(request_id, self.dir)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DeletionRequestError(
                f"request file {path} is not valid JSON ({err}); restore it from backup"
            ) from err
        if isinstance(payload, dict):
            _check_checksum(path, payload)
        try:
            return DeletionRequest.from_json(payload)
        except DeletionRequestError as err:
            raise DeletionRequestError(
                f"request file {path} holds an invalid request ({err}); restore it from backup"
            ) from err

    def all(self) -> list[DeletionRequest]:
        """Every request, oldest first."""
        requests = [self.get(p.stem) for p in self.dir.glob("*.json")]
        return sorted(requests, key=lambda r: (r.created_at, r.request_id))

    def pending(self) -> list[DeletionRequest]:
        """Requests not served yet, oldest first."""
        return [r for r in self.all() if r.status == "pending"]

    def record_failure(self, request_id: str, reason: str) -> DeletionRequest:
        """Keep the request pending, remembering why serving it failed (a served one is left as is)."""
        current = self.get(request_id)
        if current.status == "served":
            logger.warning("ignoring a failure report for %s: it was served already", request_id)
            return current
        updated = replace(current, attempts=current.attempts + 1, last_error=reason)
        self._write(updated)
        return updated

    def mark_served(self, request_id: str, *, resolved_ids: SampleIds, receipt: DeletionReceipt) -> DeletionRequest:
        """``begin_commit`` then ``finish_commit`` (for callers with nothing to do in between)."""
        self.begin_commit(request_id, resolved_ids=resolved_ids, receipt=receipt)
        return self.finish_commit(request_id)

    def begin_commit(self, request_id: str, *, resolved_ids: SampleIds, receipt: DeletionReceipt) -> DeletionReceipt:
        """First step of serving a request: write its receipt, then its forgotten ids.

        The receipt's ``ids_hmac`` is set here, from ``resolved_ids`` under this node's key
        (whatever the given receipt holds); the written receipt is returned. From here on
        the ids are excluded from training and the commit is decided: a crash before
        ``finish_commit`` leaves a pending request with a receipt, which
        ``interrupted_commits`` lists so the client finishes it on its next start
        (``fedunlearn.site_unlearning.resume_commits``).
        """
        self.get(request_id)  # raises for an unknown request
        ids = np.asarray(resolved_ids, dtype=np.int64)
        final = replace(receipt, ids_hmac=self.ids_hmac(request_id, ids))
        write_json_atomic(self.receipts_dir / f"{request_id}.json", final.to_json())
        save_npy_atomic(self.dir / f"{request_id}.forgotten.npy", ids)
        return final

    def finish_commit(self, request_id: str) -> DeletionRequest:
        """Last step of serving a request: flip its status to served (needs ``begin_commit`` first)."""
        receipt = self.receipt(request_id)
        updated = replace(self.get(request_id), status="served", served_at=receipt.served_at, last_error=None)
        self._write(updated)
        return updated

    def interrupted_commits(self) -> list[DeletionRequest]:
        """Pending requests whose commit began (a receipt exists) but never finished (a crash)."""
        return [r for r in self.pending() if (self.receipts_dir / f"{r.request_id}.json").exists()]

    def committed_ids(self, request_id: str) -> SampleIds | None:
        """The ids ``begin_commit`` stored for a request (None if it never got that far)."""
        path = self.dir / f"{request_id}.forgotten.npy"
        return _load_ids(path) if path.exists() else None

    def forgotten_ids(self) -> SampleIds:
        """All ids of served requests: excluded from every later training round.

        Each request's ids are checked against the HMAC in its receipt, so a damaged file
        (or node secret) raises DeletionRequestError instead of silently letting samples back in.
        """
        served = [r.request_id for r in self.all() if r.status == "served"]
        missing = [rid for rid in served if not (self.dir / f"{rid}.forgotten.npy").exists()]
        if missing:
            raise DeletionRequestError(
                f"served request(s) {missing} have no {missing[0]}.forgotten.npy in {self.dir} (deleted or lost); "
                "restore it from backup: until then this client cannot tell which samples it must never train on"
            )
        parts = []
        for path in sorted(self.dir.glob("*.forgotten.npy")):
            request_id = path.name.removesuffix(".forgotten.npy")
            ids = _load_ids(path)
            receipt = self.receipts_dir / f"{request_id}.json"
            if receipt.exists() and not self.ids_match_receipt(request_id, ids):
                raise DeletionRequestError(
                    f"{path} does not hold the ids its receipt {receipt} hashes, or the node secret "
                    f"{self.state_dir / NODE_SECRET_FILE} changed; restore them from backup: until then this "
                    "client cannot tell which samples it must never train on"
                )
            parts.append(ids)
        return np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.empty(0, np.int64)

    # ------------------------------------------------------------------ keyed receipts

    def node_secret(self, *, create: bool = False) -> bytes:
        """This node's receipt secret (see ``load_node_secret``); it never leaves the node."""
        return load_node_secret(self.state_dir, create=create)

    def receipt_key(self, request_id: str, *, create: bool = False) -> bytes:
        """The key of ``request_id``'s ``ids_hmac``: what a data officer gives an auditor, with
        the ids, to prove this one receipt (``ids_hmac(ids, secret=key) == receipt ids_hmac``)."""
        return derive_receipt_key(self.node_secret(create=create), request_id)

    def ids_hmac(self, request_id: str, sample_ids: SampleIds | Sequence[int]) -> str:
        """The ``ids_hmac`` a receipt of ``request_id`` forgetting ``sample_ids`` carries
        (creates the node secret on first use)."""
        return ids_hmac(sample_ids, secret=self.receipt_key(request_id, create=True))

    def ids_match_receipt(self, request_id: str, sample_ids: SampleIds | Sequence[int]) -> bool:
        """Whether ``sample_ids`` are exactly the ids ``request_id``'s receipt covers (under this node's key)."""
        expected = ids_hmac(sample_ids, secret=self.receipt_key(request_id))
        return hmac.compare_digest(expected, self.receipt(request_id).ids_hmac)

    def receipt(self, request_id: str) -> DeletionReceipt:
        """The receipt of a served request; an unreadable or invalid one raises naming the file."""
        path = self.receipts_dir / f"{request_id}.json"
        if not path.exists():
            raise DeletionRequestError(f"no receipt for request {request_id!r} in {self.receipts_dir}")
        try:
            return DeletionReceipt.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, DeletionRequestError) as err:
            raise DeletionRequestError(
                f"receipt file {path} is unreadable ({err}); restore it from backup (the server's copy under its "
                "out-dir/receipts lacks the sample count)"
            ) from err

    def receipts(self) -> list[dict[str, Any]]:
        """Receipts of served requests, oldest first."""
        rows = [self.receipt(p.stem).to_json() for p in self.receipts_dir.glob("*.json")]
        return sorted(rows, key=lambda r: r.get("served_at", 0.0))
