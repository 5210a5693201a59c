"""A loopback consortium on Flower's deployment engine, with a deletion filed on one node mid-run.

``fedunlearn deploy-local --nodes 3 --rounds 3 --delete-on-node 2 --delete-samples 50``
(also ``python -m simulations.deploy_local``) starts, all on 127.0.0.1 and under ``--out``:
a SuperLink with TLS and SuperNode authentication, registers one key per SuperNode, starts
the SuperNodes (each with its own partition, state directory and data root), runs the
federation with ``flwr run <app> <connection> --stream``, files the deletion through
``fedunlearn forget`` on the chosen node once it has finished round 1, waits for the run to
end, prints where the receipts are, and stops every process it started (also on failure or
Ctrl-C). The federation options are those of ``fedunlearn simulate``.

A deployment starts a new ClientApp process for every message, so the defaults are a quick
demo: 3 nodes, 3 rounds, an MLP on 500 samples per node, and ``--set`` defaults
``unlearn.partial_amnesiac.outer-steps=1`` and ``train.fraction-evaluate=0.0`` (no
client-evaluation messages); any ``--set key=value`` given overrides them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.local import LocalDeployment
from deploy.processes import interrupt_on_signals
from deploy.run import DeletionPlan, RunOutcome, run_federation
from fedunlearn.config import FederationConfig
from fedunlearn.errors import FedUnlearnError
from simulations import out_dir
from simulations.cli_options import add_federation_options, config_from_args

#: Small defaults: a deployment spawns one ClientApp process per message, so keep the demo quick.
#: The ``--set`` items come first, so the user's own ``--set`` items override them.
DEMO_DEFAULTS = {
    "clients": 3,
    "rounds": 3,
    "model": "mlp",
    "samples_per_client": 500,
    "test_samples": 1000,
    "set": ["unlearn.partial_amnesiac.outer-steps=1", "train.fraction-evaluate=0.0"],
}


def build_parser() -> argparse.ArgumentParser:
    """Federation options (as ``fedunlearn simulate``) plus the deployment and deletion options."""
    parser = argparse.ArgumentParser(
        prog="fedunlearn deploy-local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_federation_options(parser)
    parser.add_argument("--nodes", dest="clients", type=int, help="SuperNodes to start (= --clients; default: 3)")
    parser.set_defaults(**DEMO_DEFAULTS)
    g = parser.add_argument_group("deletion filed mid-run through `fedunlearn forget`")
    g.add_argument(
        "--delete-on-node",
        type=int,
        default=None,
        metavar="K",
        help="partition id of the node that files it (default: the last node; -1: no deletion)",
    )
    what = g.add_mutually_exclusive_group()
    what.add_argument(
        "--delete-samples", type=int, default=None, metavar="N", help="N random samples of that node (default: 50)"
    )
    what.add_argument(
        "--delete-class", type=int, default=None, metavar="C", help="every sample of class C on that node"
    )
    what.add_argument("--delete-all", action="store_true", help="everything the node contributed (it leaves)")
    g.add_argument(
        "--from-class",
        type=int,
        default=None,
        metavar="C",
        help="draw the --delete-samples ids among class C (without N: all of them); still a sample-level request",
    )
    g.add_argument(
        "--delete-after-round", type=int, default=1, help="file it once this round is done (default: %(default)s)"
    )
    d = parser.add_argument_group("deployment")
    d.add_argument("--insecure", action="store_true", help="no TLS and no node authentication (debugging only)")
    d.add_argument(
        "--timeout", type=float, default=1800.0, help="give up after this many seconds (default: %(default)s)"
    )
    d.add_argument("--quiet", action="store_true", help="do not echo the ServerApp's log")
    return parser


def deletion_plan(args: argparse.Namespace, num_nodes: int) -> DeletionPlan | None:
    """Return the deletion the options ask for (None with ``--delete-on-node -1``)."""
    node = num_nodes - 1 if args.delete_on_node is None else args.delete_on_node
    if node == -1:
        return None
    if not 0 <= node < num_nodes:
        raise SystemExit(f"--delete-on-node must be in [0, {num_nodes}) or -1, got {node}")
    if args.from_class is not None and (args.delete_all or args.delete_class is not None):
        raise SystemExit("--from-class goes with --delete-samples (or alone), not with --delete-class/--delete-all")
    if args.delete_all:
        return DeletionPlan(node, "client", after_round=args.delete_after_round, seed=args.seed)
    if args.delete_class is not None:
        return DeletionPlan(node, "class", label=args.delete_class, after_round=args.delete_after_round, seed=args.seed)
    count = args.delete_samples if args.delete_samples is not None or args.from_class is not None else 50
    return DeletionPlan(
        node, "sample", count=count, label=args.from_class, after_round=args.delete_after_round, seed=args.seed
    )


def report(outcome: RunOutcome, deployment: LocalDeployment) -> None:
    """Where everything is: results, the receipt on the node and the server's copy."""
    print(f"\nrun {outcome.run_id}: {outcome.status} in {outcome.seconds:.0f} s; results: {outcome.results}")
    if outcome.request_id is None:
        return
    print(f"deletion request {outcome.request_id} (ids: {outcome.forget_ids_file or '-'})")
    if outcome.node_receipt is None:
        print("  not served in this run: it stays pending on the node and is served in the next run")
        return
    print(f"  receipt on the node:      {outcome.node_receipt}")
    print(f"  receipt on the server:    {outcome.server_receipt}")
    node_dir = outcome.node_receipt.parent.parent
    print(f"  list it as the site does: fedunlearn receipts --state-dir {node_dir}")
    print(f"logs: {deployment.root / 'logs'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = args.out or f"runs/deploy-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        config = config_from_args(args)
        root = Path(args.out).resolve()
        plan = deletion_plan(args, config.data.num_clients)
        out_dir.prepare(root, overwrite=args.overwrite, resume=False)
    except (FedUnlearnError, out_dir.OutDirError) as err:
        print(f"fedunlearn deploy-local: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    deployment = LocalDeployment(
        root, num_nodes=config.data.num_clients, data_root=Path(config.data.root or "."), tls=not args.insecure
    )
    try:
        with interrupt_on_signals():
            return _run(deployment, config, plan, args)
    except KeyboardInterrupt as err:
        print(f"\ninterrupted ({err or 'Ctrl-C'}); stopping every process", file=sys.stderr)
        return 130
    finally:
        survivors = deployment.stop()
        print(
            f"stopped all {len(deployment.supervisor.children)} started programs"
            + (f"; SURVIVORS: {survivors}" if survivors else " (none left running)"),
            file=sys.stderr,
        )


def _run(
    deployment: LocalDeployment, config: FederationConfig, plan: DeletionPlan | None, args: argparse.Namespace
) -> int:
    print(
        f"starting a SuperLink on {deployment.address} and {len(deployment.nodes)} SuperNodes "
        f"({'insecure' if args.insecure else 'TLS + node authentication'}) under {deployment.root}",
        file=sys.stderr,
    )
    deployment.start()
    outcome = run_federation(
        deployment, config, deletion=plan, timeout=args.timeout, echo=None if args.quiet else print
    )
    report(outcome, deployment)
    return 0 if outcome.completed else 1


if __name__ == "__main__":
    raise SystemExit(main())
