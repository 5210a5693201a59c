"""Run one federation as a real Flower simulation and write its results and plots.

``python -m simulations.simulate --dataset mnist --model lenet --clients 5 --rounds 3``
(also ``fedunlearn simulate``). Any run-config key can be set with ``--set key=value``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedunlearn.config import FederationConfig
from fedunlearn.data import resolve_data_root
from fedunlearn.results import RoundRecord
from simulations.plots_federated import plot_training

#: CLI option -> run-config key (the CLI's convenience names; everything else via --set).
OPTION_KEYS: dict[str, str] = {
    "dataset": "dataset",
    "model": "model",
    "clients": "num-clients",
    "rounds": "num-server-rounds",
    "partition": "partition",
    "alpha": "dirichlet-alpha",
    "keep_ratio": "keep-ratio",
    "seed": "seed",
    "local_epochs": "local-epochs",
    "batch_size": "batch-size",
    "lr": "lr",
    "samples_per_client": "samples-per-client",
    "test_samples": "test-samples",
}


def add_federation_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that starts a federation."""
    defaults = FederationConfig()
    g = parser.add_argument_group("federation")
    g.add_argument(
        "--dataset", default=defaults.data.dataset, help="mnist, organamnist, digits, ... (default: %(default)s)"
    )
    g.add_argument(
        "--model", default=defaults.train.model, help="mlp, lenet, convnet, alexnet, resnet9 (default: %(default)s)"
    )
    g.add_argument(
        "--clients", type=int, default=defaults.data.num_clients, help="number of clients (default: %(default)s)"
    )
    g.add_argument("--rounds", type=int, default=defaults.num_rounds, help="FedAvg rounds (default: %(default)s)")
    g.add_argument(
        "--partition", default=defaults.data.partition, help="iid, dirichlet, by_class (default: %(default)s)"
    )
    g.add_argument(
        "--alpha", type=float, default=defaults.data.dirichlet_alpha, help="Dirichlet alpha (default: %(default)s)"
    )
    g.add_argument(
        "--keep-ratio",
        type=float,
        default=defaults.history.keep_ratio,
        help="history keep ratio rho (default: %(default)s)",
    )
    g.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of partition, init and training (default: %(default)s)"
    )
    g.add_argument(
        "--local-epochs",
        type=int,
        default=defaults.train.local_epochs,
        help="local epochs per round (default: %(default)s)",
    )
    g.add_argument(
        "--batch-size", type=int, default=defaults.train.batch_size, help="local batch size (default: %(default)s)"
    )
    g.add_argument("--lr", type=float, default=defaults.train.lr, help="local SGD learning rate (default: %(default)s)")
    g.add_argument("--samples-per-client", type=int, default=None, help="cap each client's share (default: all)")
    g.add_argument("--test-samples", type=int, default=None, help="cap the test set (default: all)")
    g.add_argument("--data-root", default=None, help="dataset folder (default: $FEDUNLEARN_DATA or ~/.fedunlearn/data)")
    g.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other run-config key (repeatable)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: runs/<dataset>-<model>-<time>)")
    parser.add_argument(
        "--deletion-schedule",
        default=None,
        metavar="R:C:KIND[:ARG];...",
        help="deletions to file, e.g. '3:1:sample:0.1;3:2:class:7;3:4:client' (default: none)",
    )
    parser.add_argument(
        "--method", default=None, help=f"unlearning method (default: {FederationConfig().unlearn.method})"
    )
    parser.add_argument("--no-rt", action="store_true", help="skip the retrain baseline (RT) run")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="reuse a non-empty --out folder, deleting its previous client state and results",
    )
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for Ray (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> FederationConfig:
    """The one FederationConfig the options describe (through the run-config bridge)."""
    overrides: dict[str, Any] = {
        key: getattr(args, opt) for opt, key in OPTION_KEYS.items() if getattr(args, opt) is not None
    }
    if getattr(args, "deletion_schedule", None):
        overrides["deletion-schedule"] = args.deletion_schedule
    if getattr(args, "method", None):
        overrides["unlearn-method"] = args.method
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    out = Path(args.out or f"runs/{args.dataset}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    overrides.update(
        {
            "data-root": str(resolve_data_root(args.data_root)),
            "out-dir": str(out),
            "state-root": str(out / "state"),
            "client-threads": 1,
        }
    )
    return FederationConfig.from_run_config(overrides)


def run_federation(config: FederationConfig, *, cpus: int = 2, progress: bool = True) -> dict[str, Any]:
    """Run ``config`` with Flower's simulation engine; return the parsed results.json."""
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from server.server_app import make_server_app

    bar = tqdm(total=config.num_rounds, desc="FedAvg rounds", unit="round", disable=not progress)

    def on_round(record: RoundRecord) -> None:
        bar.update(1)
        bar.set_postfix(test_acc=f"{record.test_accuracy:.4f}", loss=f"{record.train_loss or float('nan'):.3f}")

    server_app = make_server_app(overrides=config.to_run_config(), on_round=on_round)
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "log_to_driver": True},
    }
    try:
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=config.data.num_clients, backend_config=backend
        )  # type: ignore[arg-type]
    finally:
        bar.close()
    assert config.out_dir is not None
    results_path = Path(config.out_dir) / "results.json"
    if not results_path.exists():
        raise RuntimeError(f"the federation ended without writing {results_path}; see the log above")
    results: dict[str, Any] = json.loads(results_path.read_text(encoding="utf-8"))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedunlearn simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_federation_options(parser)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("fedunlearn").addHandler(handler)
    logging.getLogger("fedunlearn").setLevel(logging.INFO)
    config = config_from_args(args)
    prepare_out_dir(Path(config.out_dir or "."), overwrite=args.overwrite)
    if not config.deletion_schedule:
        results = run_federation(config, cpus=args.cpus)
        png = plot_training(results, Path(config.out_dir or ".") / "training.png")
        print_summary(results, png)
        return 0
    from simulations.unlearning_run import run_with_retrain

    run_with_retrain(config, cpus=args.cpus, with_rt=not args.no_rt)
    return 0


def prepare_out_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to mix a new run with an old one's client state (pending requests, histories)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SystemExit(
                f"{out} is not empty: its client state (histories, pending deletion requests) would "
                "leak into this run. Choose another --out or pass --overwrite to delete it."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def print_summary(results: Mapping[str, Any], png: Path) -> None:
    """The headline numbers of a run, and where its files are."""
    last = results["rounds"][-1]
    clients = last["clients"]
    per_round = [c["history_round_bytes"] for c in clients]
    dense = [c["history_dense_bytes"] / max(len(results["rounds"]), 1) for c in clients]
    print(f"final test accuracy {last['test_accuracy']:.4f} after {last['round']} rounds")
    if clients and sum(dense):
        print(
            f"history bytes per client per round: mean {sum(per_round) / len(per_round):,.0f} "
            f"(dense {sum(dense) / len(dense):,.0f}, ratio {sum(per_round) / sum(dense):.3f})"
        )
    print(f"results: {Path(results['config']['out-dir']) / 'results.json'}; plot: {png}")


if __name__ == "__main__":
    raise SystemExit(main())
