"""``fedunlearn receipts``: this node's served deletion requests (receipts) and pending ones.

Examples::

    fedunlearn receipts --state-dir /srv/fedunlearn/state
    fedunlearn receipts --state-dir /srv/fedunlearn/state --json > receipts.json

A receipt names the request, its kind, how many samples it forgot, the SHA-256 of their ids
(the server holds the same receipt; it never saw the ids), the model digests before and
after, the round, the method and the verification metrics (FA, RA, MIA on this node, TA on
the server). ``ids_verified`` re-computes the hash from the ids this node actually forgot.
Pending requests show how often serving them failed and why.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedunlearn.deletion import DeletionQueue, DeletionRequest, ids_digest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.node_cli.checks import SiteRecord

EXIT_ERROR = 2
METRIC_ORDER = ("FA", "RA", "MIA", "TA", "TA_before")


@dataclass
class ReceiptsReport:
    """Served requests (receipt fields + request status) and pending ones, oldest first."""

    state_dir: str
    site: dict[str, Any] | None
    served: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)


def collect(state_dir: Path) -> ReceiptsReport:
    """Read every request and receipt under ``state_dir`` (never writes).

    Raises DeletionRequestError if ``state_dir`` holds no request folder (a wrong path) or
    a request file is unreadable.
    """
    if not (state_dir / "requests").is_dir():
        raise DeletionRequestError(
            f"{state_dir} holds no requests/ folder: it is not a node's state directory, "
            "or no request was ever filed there; check --state-dir"
        )
    queue = DeletionQueue(state_dir)
    site = SiteRecord.load(state_dir)
    report = ReceiptsReport(str(state_dir), site.info if site else None)
    for request in queue.all():
        receipt_path = queue.receipts_dir / f"{request.request_id}.json"
        if receipt_path.exists():
            report.served.append(_served_row(queue, request, receipt_path))
        else:
            report.pending.append(_pending_row(request))
    report.served.sort(key=lambda row: row.get("served_at") or 0.0)
    return report


def _served_row(queue: DeletionQueue, request: DeletionRequest, receipt_path: Path) -> dict[str, Any]:
    try:
        receipt = json.loads(receipt_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeletionRequestError(
            f"receipt {receipt_path} is unreadable ({err}); the server keeps a copy under its out-dir/receipts"
        ) from err
    forgotten_path = queue.dir / f"{request.request_id}.forgotten.npy"
    verified = None
    if forgotten_path.exists():
        verified = ids_digest(np.load(forgotten_path, allow_pickle=False)) == receipt.get("ids_sha256")
    return {
        **receipt,
        "status": request.status,
        "created_at": request.created_at,
        "ids_verified": verified,
        "receipt_path": str(receipt_path),
    }


def _pending_row(request: DeletionRequest) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": request.request_id,
        "kind": request.kind,
        "label": request.label,
        "num_samples": len(request.sample_ids) if request.kind == "sample" else None,
        "created_at": request.created_at,
        "attempts": request.attempts,
        "last_error": request.last_error,
    }
    if request.kind == "sample":  # the receipt will carry the same hash once served
        row["ids_sha256"] = ids_digest(request.sample_ids)
    return row


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def format_text(report: ReceiptsReport) -> str:
    """Format the report as the human-readable listing."""
    site = report.site
    where = (
        f" (partition {site.get('partition_id')} of {site.get('dataset')}, {site.get('num_samples')} samples)"
        if site
        else ""
    )
    lines = [f"state directory {report.state_dir}{where}", f"served: {len(report.served)}"]
    for row in report.served:
        metrics = row.get("metrics", {})
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_ORDER if k in metrics)
        check = {True: "matches the forgotten ids", False: "DOES NOT MATCH the forgotten ids", None: "not checked"}
        lines += [
            f"  {row['request_id']}  {row['kind']}-level  {row['num_samples']} samples  round {row['server_round']}  "
            f"{row['method']}  served {_when(row.get('served_at'))}",
            f"      {shown}",
            f"      ids sha256 {row['ids_sha256'][:16]}... ({check[row['ids_verified']]})",
            f"      model {row['model_digest_before'][:12]} -> {row['model_digest_after'][:12]}",
            f"      {row['receipt_path']}",
        ]
    lines.append(f"pending: {len(report.pending)}")
    for row in report.pending:
        what = {"sample": f"{row['num_samples']} samples", "class": f"class {row['label']}"}.get(
            row["kind"], "all data"
        )
        error = f"  last error: {row['last_error']}" if row["last_error"] else ""
        lines.append(
            f"  {row['request_id']}  {row['kind']}-level  {what}  filed {_when(row['created_at'])}  "
            f"attempts {row['attempts']}{error}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (0 listed, 2 no such state directory)."""
    parser = argparse.ArgumentParser(
        prog="fedunlearn receipts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="this node's state directory")
    parser.add_argument("--json", action="store_true", help="print JSON (served and pending lists) instead of text")
    args = parser.parse_args(argv)
    try:
        report = collect(args.state_dir)
    except DeletionRequestError as err:
        print(f"fedunlearn receipts: {err}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(
            json.dumps(
                {
                    "state_dir": report.state_dir,
                    "site": report.site,
                    "served": report.served,
                    "pending": report.pending,
                },
                indent=2,
            )
        )
    else:
        print(format_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
