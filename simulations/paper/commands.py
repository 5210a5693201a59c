"""Dispatch ``paper <command> ...`` to the command's ``main(argv) -> int``.

``python -m simulations.paper fig1 --out DIR``; the ``fedunlearn`` CLI maps its ``paper``
subcommand to ``main`` here. As in ``simulations/cli.py``, each command's module is
imported only when it runs, by an ordinary import in a small function.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Command = Callable[[Sequence[str]], int]


def _fig1(argv: Sequence[str]) -> int:
    from simulations.paper.fig1 import main

    return main(argv)


def _fig2(argv: Sequence[str]) -> int:
    from simulations.paper.fig2 import main

    return main(argv)


def _fig3(argv: Sequence[str]) -> int:
    from simulations.paper.fig3 import main

    return main(argv)


def _fig4(argv: Sequence[str]) -> int:
    from simulations.paper.fig4 import main

    return main(argv)


def _sweep(argv: Sequence[str]) -> int:
    from simulations.paper.sweep import main

    return main(argv)


def _claims(argv: Sequence[str]) -> int:
    from simulations.paper.claims import main

    return main(argv)


#: command -> (entry point, one-line help)
COMMANDS: dict[str, tuple[Command, str]] = {
    "fig1": (_fig1, "MNIST: accuracy on forgotten/retained data over the unlearning steps"),
    "fig2": (_fig2, "OrganAMNIST (or MNIST if missing): the same curves"),
    "fig3": (_fig3, "Grad-CAM maps of classes 3 and 1 before/after unlearning and for RT"),
    "fig4": (_fig4, "efficacy against exactly p percent of affected batches"),
    "sweep": (_sweep, "why partial amnesiac loses retained accuracy: the sweep of causes"),
    "claims": (_claims, "check the paper's claims against finished runs"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``<command> [args]``; ``--help`` lists the commands."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="paper", description="Reproduce the partial-unlearning paper's figures.")
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
    )
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    command = parser.parse_args(args[:1]).command
    return int(COMMANDS[command][0](args[1:]))
