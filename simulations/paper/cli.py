"""Command-line pieces every figure shares: arguments, sizes, data loading with a fallback.

Every figure command takes ``--out DIR`` (required), ``--data-root`` (default
``$FEDUNLEARN_DATA``), ``--quick`` (the small version the tests run), ``--seed``,
``--threads`` (torch threads, 1 by default: the machines are shared), ``--fresh`` (ignore
finished cells in ``DIR``) and overrides of the setup (``--models``, ``--epochs``,
``--train-samples``, ``--keep-ratio``, ``--lr``, ``--forget-class``).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fedunlearn.data import DatasetBundle, load_dataset
from fedunlearn.errors import DataNotFoundError
from simulations.paper.settings import PaperSetup

logger = logging.getLogger("simulations.paper")

#: argparse destination -> PaperSetup field, for the overrides every command accepts.
OVERRIDES = {
    "models": "models",
    "epochs": "epochs",
    "train_samples": "train_samples",
    "keep_ratio": "keep_ratio",
    "lr": "lr",
    "forget_class": "forget_class",
    "seed": "seed",
}


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the shared options (defaults shown in --help)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (JSON + PNG)")
    p.add_argument("--data-root", default=None, help="data folder (default: $FEDUNLEARN_DATA)")
    p.add_argument("--quick", action="store_true", help="the small version (a minute or two)")
    p.add_argument("--fresh", action="store_true", help="recompute cells already finished in --out")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--seed", type=int, default=None, help="seed of subsets, batches, init, deletion (0)")
    p.add_argument("--models", nargs="+", default=None, help="models (default: the figure's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--train-samples", type=int, default=None, help="cap on training samples")
    p.add_argument("--keep-ratio", type=float, default=None, help="rho of the partial methods (0.1)")
    p.add_argument("--lr", type=float, default=None, help="training learning rate (0.05)")
    p.add_argument("--forget-class", type=int, default=None, help="the forgotten class (3)")
    return p


def add_federated(parser: argparse.ArgumentParser) -> None:
    """``--federated``: train with five Flower clients and serve the deletion on one of them."""
    parser.add_argument(
        "--federated",
        action="store_true",
        help="train with 5 Flower clients, client 1 deleting the class (writes <figure>-federated.json/.png)",
    )


def figure_name(figure: str, args: argparse.Namespace) -> str:
    """The output files' stem: ``fig1``, or ``fig1-federated`` for a federated run."""
    return f"{figure}-federated" if args.federated else figure


def setup_from(args: argparse.Namespace, *, quick: PaperSetup, full: PaperSetup, **extra: Any) -> PaperSetup:
    """The quick or full setup with the command line's overrides (and ``extra`` fields) applied."""
    base = quick if args.quick else full
    changes: dict[str, Any] = {f: getattr(args, a) for a, f in OVERRIDES.items() if getattr(args, a) is not None}
    if "models" in changes:
        changes["models"] = tuple(changes["models"])
    return base.replace(**changes, **extra)


def start(args: argparse.Namespace) -> None:
    """Logging and torch threads, as every command sets them."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)


def load_data(
    setup: PaperSetup, *, data_root: str | None, fallback: str | None = None
) -> tuple[DatasetBundle, PaperSetup, dict[str, Any]]:
    """Load ``setup.dataset``; if its files are missing and ``fallback`` names a dataset, use that.

    Returns the bundle, the setup actually run and what to record about the data
    (``requested``, ``used``, and ``fallback_reason`` when the fallback was taken).
    """
    facts: dict[str, Any] = {"requested": setup.dataset, "used": setup.dataset}
    try:
        bundle = load_dataset(setup.dataset, root=data_root)
    except DataNotFoundError as err:
        if fallback is None:
            raise
        logger.warning("%s is not available (%s). Running the same figure on %s instead.", setup.dataset, err, fallback)
        facts.update(used=fallback, fallback_reason=str(err))
        bundle, setup = load_dataset(fallback, root=data_root), setup.replace(dataset=fallback)
    facts.update(num_classes=bundle.num_classes, train_size=len(bundle.train), test_size=len(bundle.test))
    return bundle, setup, facts


def argv_list(argv: Sequence[str] | None) -> list[str] | None:
    """``argv`` as a list (None: argparse reads sys.argv)."""
    return None if argv is None else list(argv)
