"""The ``fedunlearn`` command: one entry point, one subcommand per task."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module with ``main(argv)``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("simulations.simulate", "run a federation as a Flower simulation"),
    "forget": ("fedunlearn.node_cli.forget", "queue a deletion request on this node (run on the node)"),
    "receipts": ("fedunlearn.node_cli.receipts", "list this node's deletion receipts and pending requests"),
    "make-certs": ("fedunlearn.deploy.certs", "create a private CA, SuperLink certificate and SuperNode keys"),
    "deploy-local": ("simulations.deploy_local", "run a TLS-authenticated SuperLink + SuperNodes on 127.0.0.1"),
    "bench": ("simulations.bench", "benchmark every unlearning method against retraining (profiles quick, full)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``fedunlearn <command> ...`` to the command's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fedunlearn", description="Federated unlearning on Flower.")
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in sorted(COMMANDS.items()))
    )
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    parsed = parser.parse_args(args[:1])
    module = importlib.import_module(COMMANDS[parsed.command][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
