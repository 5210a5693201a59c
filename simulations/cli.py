"""The ``fedunlearn`` command: one entry point, one subcommand per task.

Each subcommand's module is imported only when it runs (Flower, Ray and torch take seconds
to import), with an ordinary import in a small function: no import strings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Command = Callable[[Sequence[str]], int]


def _simulate(argv: Sequence[str]) -> int:
    from simulations.simulate import main

    return main(argv)


def _bench(argv: Sequence[str]) -> int:
    from simulations.bench import main

    return main(argv)


def _forget(argv: Sequence[str]) -> int:
    from fedunlearn.node_cli.forget import main

    return main(argv)


def _receipts(argv: Sequence[str]) -> int:
    from fedunlearn.node_cli.receipts import main

    return main(argv)


def _make_certs(argv: Sequence[str]) -> int:
    from deploy.certs import main

    return main(argv)


def _deploy_local(argv: Sequence[str]) -> int:
    from simulations.deploy_local import main

    return main(argv)


def _paper(argv: Sequence[str]) -> int:
    from simulations.paper.commands import main

    return main(argv)


def _sfr_compare(argv: Sequence[str]) -> int:
    from simulations.sfr_compare import main

    return main(argv)


#: subcommand -> (entry point, one-line help)
COMMANDS: dict[str, tuple[Command, str]] = {
    "simulate": (_simulate, "run a federation as a Flower simulation (with a schedule: method vs none, finetune, RT)"),
    "bench": (_bench, "benchmark unlearning methods against none, finetune and RT (profiles: quick, evidence, ...)"),
    "paper": (_paper, "reproduce the partial-unlearning paper's figures (fig1-fig4, sweep, claims)"),
    "sfr-compare": (_sfr_compare, "federated vs centralized SFR-on on a finished comparison's deletion"),
    "forget": (_forget, "queue a deletion request on this node (run on the node)"),
    "receipts": (_receipts, "list this node's deletion receipts and pending requests"),
    "make-certs": (_make_certs, "create a private CA, SuperLink certificate and SuperNode keys (extra [deploy])"),
    "deploy-local": (_deploy_local, "run a TLS-authenticated SuperLink + SuperNodes on 127.0.0.1"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``fedunlearn <command> ...`` to the command."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fedunlearn", description="Federated unlearning on Flower.")
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in sorted(COMMANDS.items()))
    )
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    parsed = parser.parse_args(args[:1])
    return int(COMMANDS[parsed.command][0](args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
