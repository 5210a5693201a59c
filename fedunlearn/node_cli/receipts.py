"""``fedunlearn receipts``: this node's served deletion requests (receipts) and pending ones.

Examples::

    fedunlearn receipts --state-dir /srv/fedunlearn/state
    fedunlearn receipts --state-dir /srv/fedunlearn/state --json > receipts.json
    fedunlearn receipts --state-dir /srv/fedunlearn/state --verify TICKET-42 --samples ids.txt
    fedunlearn receipts --state-dir /srv/fedunlearn/state --show-key TICKET-42

A receipt names the request, its kind, how many samples it forgot, an HMAC of their ids
keyed with this node's secret (``state-dir/node-secret``, which never leaves the node), the
model digests before and after, the round, the method and the verification metrics (FA, RA,
MIA on this node, TA on the server). The server's copy is the same without the sample count.
``ids_verified`` re-computes the HMAC from the ids this node actually forgot. ``--verify``
checks a list of ids the data officer supplies (one per line, as for ``fedunlearn forget``)
against a receipt: exit code 0 if they are exactly the ids it covers, 1 if not.
``--show-key`` prints the key of one receipt: given that key and the ids, an auditor can
check the receipt (``fedunlearn.receipts.ids_hmac(ids, secret=key)`` equals its
``ids_hmac``) without learning anything about the node's other receipts.
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
from typing import Any, TextIO

from fedunlearn.deletion import DeletionQueue, DeletionRequest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.node_cli.checks import SiteRecord
from fedunlearn.node_cli.forget import read_ids
from fedunlearn.receipts import ids_hmac

#: Exit code of ``--verify`` when the ids do not match the receipt.
EXIT_MISMATCH = 1
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
    queue = _existing_queue(state_dir)
    site = SiteRecord.load(state_dir)
    report = ReceiptsReport(str(state_dir), site.info if site else None)
    for request in queue.all():
        receipt_path = queue.receipts_dir / f"{request.request_id}.json"
        if receipt_path.exists():
            report.served.append(_served_row(queue, request, receipt_path))
        else:
            report.pending.append(_pending_row(queue, request))
    report.served.sort(key=lambda row: row.get("served_at") or 0.0)
    return report


def _served_row(queue: DeletionQueue, request: DeletionRequest, receipt_path: Path) -> dict[str, Any]:
    try:
        receipt = json.loads(receipt_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeletionRequestError(
            f"receipt {receipt_path} is unreadable ({err}); restore it from backup (the server's copy under its "
            "out-dir/receipts lacks the sample count)"
        ) from err
    verified, problem = None, None
    try:
        ids = queue.committed_ids(request.request_id)
        verified = None if ids is None else queue.ids_match_receipt(request.request_id, ids)
    except DeletionRequestError as err:  # no node secret, a damaged receipt or id file
        problem = str(err)
    return {
        **receipt,
        "status": request.status,
        "created_at": request.created_at,
        "ids_verified": verified,
        "ids_check_error": problem,
        "receipt_path": str(receipt_path),
    }


def _pending_row(queue: DeletionQueue, request: DeletionRequest) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": request.request_id,
        "kind": request.kind,
        "label": request.label,
        "num_samples": len(request.sample_ids) if request.kind == "sample" else None,
        "created_at": request.created_at,
        "attempts": request.attempts,
        "last_error": request.last_error,
    }
    if request.kind == "sample":  # the receipt will carry the same HMAC once served
        try:
            row["ids_hmac"] = ids_hmac(request.sample_ids, secret=queue.receipt_key(request.request_id))
        except DeletionRequestError:  # no secret yet (nothing served): reading never creates it
            row["ids_hmac"] = None
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
        reason = f": {row['ids_check_error']}" if row.get("ids_check_error") else ""
        lines += [
            f"  {row['request_id']}  {row['kind']}-level  {row['num_samples']} samples  round {row['server_round']}  "
            f"{row['method']}  served {_when(row.get('served_at'))}",
            f"      {shown}",
            f"      ids hmac {str(row.get('ids_hmac') or '-')[:16]}... ({check[row['ids_verified']]}{reason})",
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


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of ``fedunlearn receipts``."""
    parser = argparse.ArgumentParser(
        prog="fedunlearn receipts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="this node's state directory")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--json", action="store_true", help="print JSON (served and pending lists) instead of text")
    what.add_argument("--verify", metavar="REQUEST_ID", help="check the ids given with --samples against a receipt")
    what.add_argument("--show-key", metavar="REQUEST_ID", help="print the key an auditor needs to check one receipt")
    parser.add_argument("--samples", metavar="FILE", help="with --verify: file of sample ids, one per line ('-' stdin)")
    return parser


def verify(state_dir: Path, request_id: str, *, samples: str, stdin: TextIO) -> bool:
    """Whether the ids in ``samples`` are exactly the ids ``request_id``'s receipt covers.

    Raises DeletionRequestError for an unknown request, a missing receipt or node secret,
    or an unreadable id file. Reading never writes.
    """
    queue = _existing_queue(state_dir)
    queue.get(request_id)  # raises, naming the folder, for a request this node never held
    ids = read_ids(samples, stdin=stdin)
    return queue.ids_match_receipt(request_id, list(ids.ids))


def _existing_queue(state_dir: Path) -> DeletionQueue:
    """The queue of ``state_dir``, which must exist (opening a queue would create its folders)."""
    if not (state_dir / "requests").is_dir():
        raise DeletionRequestError(
            f"{state_dir} holds no requests/ folder: it is not a node's state directory, "
            "or no request was ever filed there; check --state-dir"
        )
    return DeletionQueue(state_dir)


def _run(args: argparse.Namespace, stdin: TextIO) -> int:
    if args.verify is not None:
        matched = verify(args.state_dir, args.verify, samples=args.samples, stdin=stdin)
        state = "match" if matched else "DO NOT match"
        print(f"request {args.verify}: the ids in {args.samples} {state} the ids its receipt covers")
        return 0 if matched else EXIT_MISMATCH
    if args.show_key is not None:
        queue = _existing_queue(args.state_dir)
        queue.receipt(args.show_key)  # only keys of existing receipts
        print(queue.receipt_key(args.show_key).hex())
        print(
            "fedunlearn receipts: give this key and the ids to an auditor only; it opens this receipt alone",
            file=sys.stderr,
        )
        return 0
    report = collect(args.state_dir)
    if args.json:
        payload = {"state_dir": report.state_dir, "site": report.site, "served": report.served}
        print(json.dumps({**payload, "pending": report.pending}, indent=2))
    else:
        print(format_text(report))
    return 0


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    """Run the command; returns the exit code (0 listed or matched, 1 ids do not match, 2 error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.verify is None) != (args.samples is None):
        parser.error("--verify REQUEST_ID and --samples FILE go together")
    try:
        return _run(args, stdin or sys.stdin)
    except DeletionRequestError as err:
        print(f"fedunlearn receipts: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
