"""Run the federation on a started ``LocalDeployment``; file a deletion mid-run through the node CLI.

The deletion is filed the way a site's data officer would: ``fedunlearn forget --state-dir
<node state> ...`` on that node, once the node has finished a given round (its update history
lists the round, or the ServerApp logged it). The node announces the request with its next
reply, the server serves it after that round, and both keep the receipt.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.app_bundle import stage_app
from deploy.local import RUN_ID, LocalDeployment, NodeSpec
from deploy.processes import Child
from fedunlearn.config import FederationConfig
from fedunlearn.errors import FedUnlearnError
from fedunlearn.history.manifest import MANIFEST_NAME, load_manifest
from fedunlearn.site import SAMPLE_IDS_FILE, SAMPLE_LABELS_FILE
from fedunlearn.types import DeletionKind

COMPLETED = "finished:completed"


@dataclass(frozen=True)
class DeletionPlan:
    """What deploy-local files on one node.

    ``sample``: ``count`` random ids (all if None), drawn among the samples of class ``label``
    if given (a sample-level request listing ids); ``class``: class ``label``; ``client``: all.
    """

    partition_id: int
    kind: DeletionKind
    count: int | None = None
    label: int | None = None
    after_round: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind == "sample" and self.count is None and self.label is None:
            raise ValueError("a sample-level deletion needs a count, a label to draw from, or both")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        if self.kind == "class" and self.label is None:
            raise ValueError("a class-level deletion needs a label")
        if self.label is not None and self.label < 0:
            raise ValueError(f"label must be >= 0, got {self.label}")
        if self.after_round < 1:
            raise ValueError(f"after_round must be >= 1, got {self.after_round}")

    def choose_ids(self, state_dir: Path) -> np.ndarray:
        """Pick the ids a sample-level plan names from the node's site files (sorted)."""
        held = np.load(state_dir / SAMPLE_IDS_FILE)
        if self.label is not None:
            held = held[np.load(state_dir / SAMPLE_LABELS_FILE) == self.label]
        size = len(held) if self.count is None else min(self.count, len(held))
        return np.sort(np.random.default_rng(self.seed).choice(held, size=size, replace=False))


@dataclass
class RunOutcome:
    """How the run ended and where its results and the receipt copies are."""

    run_id: str | None
    status: str
    seconds: float
    results: Path
    request_id: str | None = None
    forget_ids_file: Path | None = None
    node_receipt: Path | None = None
    server_receipt: Path | None = None

    @property
    def completed(self) -> bool:
        """Whether Flower reports the run completed and the server wrote its results."""
        return self.status == COMPLETED and self.results.exists()


class RunWatch:
    """Follow ``flwr run --stream``'s log: new lines (echoed), the whole text, the run id."""

    def __init__(self, run: Child, echo: Callable[[str], None] | None) -> None:
        self.run, self.echo = run, echo
        self.offset, self.partial, self.text = 0, "", ""
        self.run_id: str | None = None

    def poll(self) -> bool:
        """Read what the log gained; returns whether ``flwr run`` is still running."""
        alive = self.run.alive()  # checked first, so the last lines are read after it ended
        if self.run.log_path.exists():
            with self.run.log_path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
            self.offset += len(data)
            *lines, self.partial = (self.partial + data.decode("utf-8", errors="replace")).split("\n")
            for line in lines:
                self.text += line + "\n"
                if self.echo is not None:
                    self.echo(line)
        match = RUN_ID.search(self.text) if self.run_id is None else None
        self.run_id = match.group(1) if match else self.run_id
        return alive


def round_finished(node: NodeSpec, *, run_id: str | None, server_round: int, server_log: str) -> bool:
    """Whether round ``server_round`` of run ``run_id`` is done for ``node``.

    True once the node's update history lists the round or the ServerApp logged it as done.
    """
    if f"[ROUND {server_round}]" in server_log:
        return True
    if run_id is None:
        return False
    manifest = node.state_dir / "history" / f"run-{run_id}" / MANIFEST_NAME
    try:
        return manifest.exists() and max(load_manifest(manifest).rounds, default=0) >= server_round
    except (OSError, ValueError, KeyError, FedUnlearnError):  # unreadable right now: not yet
        return False


def file_deletion(deployment: LocalDeployment, plan: DeletionPlan) -> tuple[str, Path | None]:
    """File ``plan`` on its node through ``fedunlearn forget``; returns (request id, id file)."""
    node = deployment.nodes[plan.partition_id]
    request_id = f"deploy-{node.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = [
        sys.executable,
        "-m",
        "simulations.cli",
        "forget",
        "--state-dir",
        str(node.state_dir),
        "--request-id",
        request_id,
    ]
    ids_file = None
    if plan.kind == "sample":
        chosen = plan.choose_ids(node.state_dir)
        ids_file = node.home / "forget-ids.txt"
        drawn = f" of class {plan.label}" if plan.label is not None else ""
        header = f"# {len(chosen)} sample ids{drawn} of {node.name}, chosen by deploy-local (seed {plan.seed})\n"
        ids_file.write_text(header + "\n".join(str(int(i)) for i in chosen) + "\n", encoding="utf-8")
        argv += ["--samples", str(ids_file)]
    elif plan.kind == "class":
        argv += ["--class", str(plan.label)]
    else:
        argv.append("--all")
    code, output = deployment.supervisor.run(f"forget-{node.name}", argv, timeout=120)
    if code != 0:
        raise RuntimeError(f"fedunlearn forget on {node.name} was refused (exit {code}):\n{output}")
    return request_id, ids_file


def run_federation(
    deployment: LocalDeployment,
    config: FederationConfig,
    *,
    deletion: DeletionPlan | None = None,
    timeout: float = 1800.0,
    echo: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Stage the app, ``flwr run`` it, file ``deletion`` when its round is done, wait for the end."""
    if config.data.num_clients != len(deployment.nodes):
        raise ValueError(
            f"data.num-clients={config.data.num_clients} but the deployment has {len(deployment.nodes)} nodes"
        )
    if deletion is not None and config.train.rounds <= deletion.after_round:
        raise ValueError(
            f"the deletion is filed after round {deletion.after_round}, so the run needs more than "
            f"{deletion.after_round} rounds (train.rounds={config.train.rounds})"
        )
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, out_dir=str(deployment.server_dir)))
    start = time.monotonic()
    watch = RunWatch(deployment.start_run(stage_app(deployment.root / "app", config)), echo)
    request: tuple[str, Path | None] | None = None
    while watch.poll():
        deployment.check_alive()
        if deletion is not None and request is None:
            node = deployment.nodes[deletion.partition_id]
            if round_finished(node, run_id=watch.run_id, server_round=deletion.after_round, server_log=watch.text):
                request = file_deletion(deployment, deletion)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"the run did not finish within {timeout:.0f} s; see {watch.run.log_path}")
        time.sleep(0.5)
    return _outcome(deployment, watch.run, watch.run_id, deletion, request, time.monotonic() - start)


def _outcome(
    deployment: LocalDeployment,
    run: Child,
    run_id: str | None,
    deletion: DeletionPlan | None,
    request: tuple[str, Path | None] | None,
    seconds: float,
) -> RunOutcome:
    status = deployment.run_status(run_id) if run_id else f"not started (flwr run exit {run.popen.returncode})"
    outcome = RunOutcome(run_id, status, seconds, deployment.server_dir / "results.json")
    if deletion is not None and request is not None:
        outcome.request_id, outcome.forget_ids_file = request
        node = deployment.nodes[deletion.partition_id]
        for attribute, path in (
            ("node_receipt", node.state_dir / "receipts"),
            ("server_receipt", deployment.server_dir / "receipts"),
        ):
            receipt = path / f"{outcome.request_id}.json"
            setattr(outcome, attribute, receipt if receipt.exists() else None)
    return outcome
