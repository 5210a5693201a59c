"""Deletion receipts and the keyed hash that binds a receipt to its ids without revealing them.

A receipt's ``ids_hmac`` is an HMAC-SHA256 of the sorted forgotten ids, keyed per request
with a key derived from a secret that never leaves the node (``<state dir>/node-secret``).
A plain hash would not do: the server can rebuild every client's partition from the seed
and test candidate id sets against it in seconds. The node keeps the full receipt; the
server keeps ``DeletionReceipt.server_copy()``, without the sample count (with the
partitions, a class-level request's count names its class). To prove one receipt to an
auditor the node hands over that receipt's key and the ids, and no other secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args

import numpy as np

from fedunlearn.atomic import fsync_dir
from fedunlearn.errors import DeletionRequestError
from fedunlearn.types import DeletionKind, SampleIds


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool: shared by record validators."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float, not a bool (NaN and Inf are refused)."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return numeric and math.isfinite(value)  # type: ignore[arg-type]


def ids_digest(sample_ids: SampleIds | Sequence[int]) -> str:
    """Unkeyed SHA-256 of the sorted unique ids: NOT for anything that leaves the node.

    Whoever knows the id space recovers small id sets from it by brute force; receipts use
    ``ids_hmac``. Kept only until every caller has switched.
    """
    return hashlib.sha256(_ids_bytes(sample_ids)).hexdigest()


def _ids_bytes(sample_ids: SampleIds | Sequence[int]) -> bytes:
    """The sorted unique ids as little-endian int64 (the same bytes whatever the order or repeats)."""
    return bytes(np.unique(np.asarray(sample_ids, dtype=np.int64)).astype("<i8").tobytes())


def ids_hmac(sample_ids: SampleIds | Sequence[int], *, secret: bytes) -> str:
    """HMAC-SHA256 of the sorted unique ids under ``secret``: binds a receipt to its ids, reveals none.

    ``secret`` is a receipt key (``DeletionQueue.receipt_key``); without it a party that
    knows the id space cannot test candidate id sets, unlike with a plain hash.
    """
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise DeletionRequestError(
            f"ids_hmac needs a secret of at least 16 bytes, got {type(secret).__name__} of length "
            f"{len(secret) if isinstance(secret, bytes) else '-'}; use DeletionQueue.ids_hmac(request_id, ids)"
        )
    return hmac.new(secret, _ids_bytes(sample_ids), hashlib.sha256).hexdigest()


def derive_receipt_key(node_secret: bytes, request_id: str) -> bytes:
    """The key of one request's ``ids_hmac``: HMAC(node secret, request id).

    One key per receipt lets the node prove one receipt's ids to an auditor (hand over the
    key and the ids) without exposing its secret or any other receipt.
    """
    return hmac.new(node_secret, b"fedunlearn receipt key\x00" + request_id.encode("utf-8"), hashlib.sha256).digest()


NODE_SECRET_FILE = "node-secret"
NODE_SECRET_BYTES = 32


def load_node_secret(state_dir: str | Path, *, create: bool = False) -> bytes:
    """The node's receipt secret (``<state_dir>/node-secret``), created on first use if ``create``.

    A missing (when not creating) or damaged secret raises DeletionRequestError naming the
    file: every receipt of the node is keyed with it, so it must be restored, not replaced.
    """
    path = Path(state_dir) / NODE_SECRET_FILE
    if not path.exists():
        if not create:
            raise DeletionRequestError(
                f"node secret {path} is missing: this node's receipts are keyed with it, so their ids cannot be "
                "checked; restore it from backup (it must never leave the node)"
            )
        _create_secret(path)
    try:
        secret = path.read_bytes()
    except OSError as err:
        raise DeletionRequestError(f"cannot read node secret {path} ({err}); restore it from backup") from err
    if len(secret) != NODE_SECRET_BYTES:
        raise DeletionRequestError(
            f"node secret {path} is damaged ({len(secret)} bytes, expected {NODE_SECRET_BYTES}); restore it from "
            "backup: every receipt of this node is keyed with it"
        )
    return secret


def _create_secret(path: Path) -> None:
    """Write 32 random bytes (mode 0o600) without ever replacing a secret another process wrote first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(NODE_SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic, and refuses to overwrite: the first writer wins
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class DeletionReceipt:
    """Proof that a request was served: what kind, how many samples, which ids (keyed hash), which model.

    The node keeps this full receipt; the server keeps ``server_copy()``, without the
    sample count. ``ids_hmac`` is set by ``DeletionQueue.begin_commit``; the server's draft
    leaves it (and ``kind``, ``num_samples``) empty for the client to fill in.

    >>> receipt = DeletionReceipt("r1", "sample", 2, "", "a" * 64, "b" * 64, 3, "partial_amnesiac", served_at=0.0)
    >>> receipt.num_samples, "num_samples" in receipt.server_copy()
    (2, False)
    """

    request_id: str
    kind: str
    num_samples: int
    ids_hmac: str
    model_digest_before: str
    model_digest_after: str
    server_round: int
    method: str
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    messages: int = 0
    served_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        problems = _receipt_problems(self)
        if problems:
            raise DeletionRequestError(f"invalid deletion receipt: {'; '.join(problems)}")

    def to_json(self) -> dict[str, Any]:
        """The full receipt as a JSON object (what the node keeps)."""
        return asdict(self)

    def server_copy(self) -> dict[str, Any]:
        """The receipt as the server may keep it: without the sample count.

        With the seed the server can rebuild each client's partition, so a class-level
        request's count would name its class (and a count narrows any id set).
        """
        return {k: v for k, v in self.to_json().items() if k not in SERVER_HIDDEN_FIELDS}

    @staticmethod
    def from_json(payload: object) -> DeletionReceipt:
        """Parse a receipt record; a malformed one raises DeletionRequestError naming the field."""
        if not isinstance(payload, dict):
            raise DeletionRequestError(f"malformed receipt: expected an object, got {type(payload).__name__}")
        problems = [f"unknown field {k!r}" for k in payload if k not in RECEIPT_FIELDS and k != "ids_sha256"]
        problems += [f"missing field {k!r}" for k in RECEIPT_REQUIRED if k not in payload]
        if "ids_sha256" in payload:
            problems.append(
                "field 'ids_sha256' (an unkeyed hash of the ids, written by an older fedunlearn) was replaced by "
                "'ids_hmac'; keep this state directory with that version or start the node on a new one"
            )
        if problems:
            raise DeletionRequestError(f"malformed receipt: {'; '.join(problems)}")
        return DeletionReceipt(**payload)


def _receipt_problems(receipt: DeletionReceipt) -> list[str]:
    """What makes a receipt's fields invalid (non-finite numbers, wrong types)."""
    problems = [
        f"{name} must be a string, got {getattr(receipt, name)!r}"
        for name in ("request_id", "kind", "ids_hmac", "model_digest_before", "model_digest_after", "method")
        if not isinstance(getattr(receipt, name), str)
    ]
    if receipt.kind not in ("", *get_args(DeletionKind)):  # "" in the server's draft
        problems.append(f"kind must be one of {', '.join(get_args(DeletionKind))}; got {receipt.kind!r}")
    problems += [
        f"{name} must be an integer >= 0, got {getattr(receipt, name)!r}"
        for name in ("num_samples", "server_round", "messages")
        if not is_int(getattr(receipt, name)) or getattr(receipt, name) < 0
    ]
    problems += [
        f"{name} must be a finite number, got {getattr(receipt, name)!r}"
        for name in ("seconds", "served_at")
        if not is_finite_number(getattr(receipt, name))
    ]
    if not isinstance(receipt.metrics, dict):
        return problems + [f"metrics must be an object of numbers, got {type(receipt.metrics).__name__}"]
    bad = {k: v for k, v in receipt.metrics.items() if not isinstance(k, str) or not is_finite_number(v)}
    if bad:
        problems.append(f"metrics must be finite numbers, got {bad}")
    return problems


RECEIPT_FIELDS = frozenset(f.name for f in fields(DeletionReceipt))
RECEIPT_REQUIRED = tuple(
    f.name for f in fields(DeletionReceipt) if f.default is MISSING and f.default_factory is MISSING
)
#: Receipt fields the node keeps to itself (``DeletionReceipt.server_copy``).
SERVER_HIDDEN_FIELDS = frozenset({"num_samples"})
