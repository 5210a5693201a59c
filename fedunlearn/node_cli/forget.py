"""``fedunlearn forget``: queue a deletion request on this node, durably, after checking it.

Examples::

    fedunlearn forget --state-dir /srv/fedunlearn/state --samples ids.txt
    grep -v '^#' ids.csv | fedunlearn forget --state-dir /srv/fedunlearn/state --samples -
    fedunlearn forget --state-dir /srv/fedunlearn/state --class 7
    fedunlearn forget --state-dir /srv/fedunlearn/state --all          # the site leaves

The id file holds one integer sample id per line (``#`` starts a comment). The request is
checked against the ids and labels this node holds and against its earlier requests; any
problem is reported with the offending lines, exit code 2, and nothing is written. On
success the request id is printed on stdout (a summary goes to stderr) and the node
announces the request to the server with its next reply.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from fedunlearn.deletion import DeletionQueue, DeletionRequest
from fedunlearn.errors import DeletionRequestError
from fedunlearn.node_cli.checks import IdList, parse_id_lines, plan_request

#: Exit code of a request that was refused (nothing written); argparse uses it for usage errors too.
EXIT_REFUSED = 2


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of ``fedunlearn forget``."""
    parser = argparse.ArgumentParser(
        prog="fedunlearn forget", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        help="this node's state directory (its SuperNode's node-config state-dir)",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--samples", metavar="FILE", help="file of sample ids, one per line ('-' reads stdin)")
    what.add_argument(
        "--class", dest="label", type=int, metavar="N", help="forget every sample of class N on this node"
    )
    what.add_argument("--all", action="store_true", help="forget everything this node contributed (it leaves)")
    parser.add_argument(
        "--request-id",
        default=None,
        help="use this id (letters, digits, - and _) instead of a random one, "
        "e.g. the ticket number of the erasure request",
    )
    parser.add_argument("--check", action="store_true", help="only check the request; write nothing")
    parser.add_argument(
        "--unchecked",
        action="store_true",
        help="queue even if the state directory has no site.json yet (the node checks it when serving)",
    )
    return parser


def read_ids(source: str, *, stdin: TextIO) -> IdList:
    """Parse the id file (or stdin for ``-``); a missing or unreadable file is a DeletionRequestError."""
    if source == "-":
        return parse_id_lines(stdin, source="<stdin>")
    path = Path(source)
    try:
        with path.open(encoding="utf-8") as handle:
            return parse_id_lines(handle, source=path.name)
    except (OSError, UnicodeDecodeError) as err:
        raise DeletionRequestError(f"cannot read the id file {source}: {err}") from err


def forget(args: argparse.Namespace, *, stdin: TextIO) -> DeletionRequest:
    """Check the request ``args`` describe and, unless ``--check``, queue it; returns it."""
    samples = read_ids(args.samples, stdin=stdin) if args.samples is not None else None
    request = plan_request(
        args.state_dir,
        samples=samples,
        label=args.label,
        everything=args.all,
        request_id=args.request_id,
        unchecked=args.unchecked,
    )
    if not args.check:
        DeletionQueue(args.state_dir).submit(request)
    return request


def describe(request: DeletionRequest) -> str:
    """``sample-level, 20 samples`` / ``class-level, class 7`` / ``client-level``."""
    detail = {"sample": f", {len(request.sample_ids)} samples", "class": f", class {request.label}"}.get(
        request.kind, ""
    )
    return f"{request.kind}-level{detail}"


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None) -> int:
    """Run the command; returns the exit code (0 queued or checked, 2 refused)."""
    args = build_parser().parse_args(argv)
    try:
        request = forget(args, stdin=stdin or sys.stdin)
    except DeletionRequestError as err:
        print(f"fedunlearn forget: refused, nothing was written: {err}", file=sys.stderr)
        return EXIT_REFUSED
    if args.check:
        print(f"fedunlearn forget: the {describe(request)} request is valid (not queued: --check)", file=sys.stderr)
        return 0
    print(request.request_id)
    print(
        f"fedunlearn forget: queued {describe(request)} request {request.request_id} in "
        f"{args.state_dir / 'requests'}; the node announces it with its next reply, and "
        f"`fedunlearn receipts --state-dir {args.state_dir}` shows its receipt once served",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
