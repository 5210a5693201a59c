"""Command-line options shared by the commands that start a federation, and the config they give."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from flwr.common.config import unflatten_dict

from fedunlearn.config import FederationConfig
from fedunlearn.data import resolve_data_root
from fedunlearn.errors import ConfigError
from fedunlearn.run_config import config_from_sections

#: CLI option -> run-config key (the CLI's convenience names; everything else via --set).
OPTION_KEYS: dict[str, str] = {
    "dataset": "data.dataset",
    "model": "train.model",
    "clients": "data.num-clients",
    "rounds": "train.rounds",
    "partition": "data.partition",
    "alpha": "data.dirichlet-alpha",
    "keep_ratio": "history.keep-ratio",
    "seed": "run.seed",
    "local_epochs": "train.local-epochs",
    "batch_size": "train.batch-size",
    "lr": "train.lr",
    "samples_per_client": "data.samples-per-client",
    "test_samples": "data.test-samples",
    "deletion_schedule": "experiment.deletion-schedule",
    "method": "unlearn.method",
}


def add_federation_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that starts a federation (defaults: the config's)."""
    d = FederationConfig()
    g = parser.add_argument_group("federation")
    g.add_argument("--dataset", help=f"mnist, organamnist, digits, ... (default: {d.data.dataset})")
    g.add_argument("--model", help=f"mlp, lenet, convnet, alexnet, resnet9 (default: {d.train.model})")
    g.add_argument("--clients", type=int, help=f"number of clients (default: {d.data.num_clients})")
    g.add_argument("--rounds", type=int, help=f"FedAvg rounds (default: {d.train.rounds})")
    g.add_argument("--partition", help=f"iid, dirichlet, by_class (default: {d.data.partition})")
    g.add_argument("--alpha", type=float, help=f"Dirichlet alpha (default: {d.data.dirichlet_alpha})")
    g.add_argument("--keep-ratio", type=float, help=f"history keep ratio rho (default: {d.history.keep_ratio})")
    g.add_argument("--seed", type=int, help=f"seed of partition, init and training (default: {d.seed})")
    g.add_argument("--local-epochs", type=int, help=f"local epochs per round (default: {d.train.local_epochs})")
    g.add_argument("--batch-size", type=int, help=f"local batch size (default: {d.train.batch_size})")
    g.add_argument("--lr", type=float, help=f"local SGD learning rate (default: {d.train.lr})")
    g.add_argument("--samples-per-client", type=int, help="cap each client's share (default: all)")
    g.add_argument("--test-samples", type=int, help="cap the test set (default: all)")
    g.add_argument("--data-root", default=None, help="dataset folder (default: $FEDUNLEARN_DATA or ~/.fedunlearn/data)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="any run-config key")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<dataset>-<model>-<time>)")
    parser.add_argument(
        "--deletion-schedule",
        metavar="R:C:KIND[:ARG];...",
        help="deletions to file, e.g. '3:1:sample:0.1;3:2:class:7;3:4:client' (default: none)",
    )
    parser.add_argument("--method", help=f"unlearning method (default: {d.unlearn.method})")
    parser.add_argument("--no-rt", action="store_true", help="skip the retrain baseline (RT) run")
    state = parser.add_mutually_exclusive_group()
    state.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run in --out (only what a run wrote is deleted)"
    )
    state.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for Ray (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> FederationConfig:
    """The one FederationConfig the options describe (ConfigError on any bad value)."""
    flat: dict[str, Any] = {
        key: getattr(args, opt) for opt, key in OPTION_KEYS.items() if getattr(args, opt) is not None
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        flat[key.strip()] = value.strip()
    name = (
        f"runs/{flat.get('data.dataset', 'mnist')}-{flat.get('train.model', 'lenet')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out = Path(args.out or name).resolve()
    flat.setdefault("data.root", str(resolve_data_root(args.data_root)))
    flat.update({"run.out-dir": str(out), "run.state-root": str(out / "state")})
    flat.setdefault("train.threads", 1)
    return config_from_sections(unflatten_dict(flat))
