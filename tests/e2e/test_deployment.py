"""End to end on Flower's deployment engine: a TLS SuperLink with SuperNode authentication and
three SuperNodes on 127.0.0.1, a deletion filed through the node CLI mid-run, receipts on both
sides, refused intruders, and every started process gone at the end.

One module-scoped deployment serves all tests (start-up costs ~20 s); tests run in file order
and the last one stops it. The fixture's finalizer stops it too, so a failing test never
leaves a process behind.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common.config import unflatten_dict

from deploy.local import LocalDeployment
from deploy.processes import tagged_pids
from deploy.run import DeletionPlan, RunOutcome, run_federation
from fedunlearn.aggregation import state_digest
from fedunlearn.config import FederationConfig
from fedunlearn.data import build_federated_data
from fedunlearn.deletion import DeletionQueue
from fedunlearn.history import HistoryStore
from fedunlearn.metrics import accuracy
from fedunlearn.node_cli import receipts
from fedunlearn.run_config import config_from_sections
from fedunlearn.site import ClientSite

pytestmark = pytest.mark.deployment

REPO = Path(__file__).resolve().parents[2]
FORGET_NODE = 2
# Small and quick: 2 rounds, no client-evaluation messages (each message starts a ClientApp
# process), a one-step unlearning phase. Every class lives on exactly one node ("by_class"),
# so forgetting a class's samples is measurable: the retrained federation could not predict
# them at all. The deletion is filed after round 1 and served after round 2, the last round,
# so the final model is the unlearned one.
SMALL = {
    "data.num-clients": 3,
    "train.rounds": 2,
    "data.samples-per-client": 300,
    "data.test-samples": 500,
    "train.model": "mlp",
    "data.partition": "by_class",
    "data.classes-per-client": 2,
    "train.local-epochs": 2,
    "train.batch-size": 32,
    "train.lr": 0.1,
    "train.fraction-evaluate": 0.0,
    "unlearn.partial_amnesiac.outer-steps": 2,
    "unlearn.max-ta-drop": 0.2,  # the forgotten class is a fifth of what the model knows
    "train.threads": 1,
}


@pytest.fixture(scope="module")
def config(data_root: Path) -> FederationConfig:
    return config_from_sections(unflatten_dict({**SMALL, "data.root": str(data_root)}))


@pytest.fixture(scope="module")
def exclusive_label(config: FederationConfig) -> int:
    """A class only the forgetting node holds (the lowest such label)."""
    data = build_federated_data(config.data, seed=config.seed)
    labels = data.bundle.train.labels.numpy()
    held = [set(labels[data.partition.for_client(k)].tolist()) for k in range(config.data.num_clients)]
    others = set().union(*(h for k, h in enumerate(held) if k != FORGET_NODE))
    return min(held[FORGET_NODE] - others)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[LocalDeployment]:
    local = LocalDeployment(tmp_path_factory.mktemp("consortium"), num_nodes=3, data_root=data_root, tls=True)
    try:
        local.start(timeout=300)
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def served(deployment: LocalDeployment, config: FederationConfig, exclusive_label: int) -> RunOutcome:
    # The data officer of node 2 lists the ids of every sample of one class (a sample-level request).
    plan = DeletionPlan(FORGET_NODE, "sample", label=exclusive_label, after_round=1, seed=0)
    return run_federation(deployment, config, deletion=plan, timeout=900)


def deployment_state(served: RunOutcome) -> Path:
    """The forgetting node's state directory (its receipt lives under it)."""
    assert served.node_receipt is not None
    return served.node_receipt.parent.parent


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(host, port) of every listening TCP socket the given processes hold (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:  # state LISTEN
                host_hex, port_hex = fields[1].split(":")
                raw = bytes.fromhex(host_hex)
                host = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((str(ipaddress.ip_address(host)), int(port_hex, 16)))
    return found


def online(deployment: LocalDeployment) -> int:
    return sum(row["status"] == "online" for row in deployment.node_statuses())


# ------------------------------------------------------------------------------ the FAB


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")
def test_the_repository_fab_holds_code_only() -> None:
    # Prepare: the files `flwr run .` would consider (.venv and .git are excluded by Flower's own rules)
    from flwr.cli.build import build_fab_from_files

    files = {
        str(p.relative_to(REPO)): p
        for p in REPO.rglob("*")
        if p.is_file() and not {".venv", ".git"} & set(p.relative_to(REPO).parts)
    }

    # Execute
    fab = build_fab_from_files(files)[0]

    # Assert: a small bundle of the three app packages' Python files (+ the generated pyproject)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert len(fab) < 2 * 1024 * 1024
    assert {n.split("/")[0] for n in names} == {"fedunlearn", "clients", "server", "pyproject.toml", ".info"}
    assert all(n.endswith(".py") for n in names if n not in ("pyproject.toml", ".info/CONTENT"))
    assert {"server/server_app.py", "clients/client_app.py"} <= set(names)


# ------------------------------------------------------------------------------ joining


def test_registered_nodes_join_over_tls_and_everything_listens_on_loopback_only(deployment: LocalDeployment) -> None:
    # Execute
    count = online(deployment)
    addresses = listening_addresses(tagged_pids(deployment.supervisor.tag))

    # Assert
    assert count == 3
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in addresses), addresses
    expected_ports = {deployment.superlink_port, *(node.port for node in deployment.nodes)}
    assert expected_ports <= {port for _, port in addresses}


def test_a_node_with_an_unregistered_key_is_refused(deployment: LocalDeployment) -> None:
    # Prepare: a valid key pair (and the CA), but its public key was never registered
    stranger = deployment.extra_node("stranger")

    # Execute
    child = deployment.start_node(stranger)
    code = child.popen.wait(timeout=120)

    # Assert: Flower exit code 305, the SuperLink's ApiError 2004; the federation is unchanged
    log = child.log_text()
    assert code != 0
    assert "Exit Code: 305" in log and "2004" in log
    assert online(deployment) == 3


def test_a_plaintext_node_cannot_connect_to_the_tls_superlink(deployment: LocalDeployment) -> None:
    # Prepare: a node that speaks plain HTTP (no TLS, hence no authentication either)
    plain = deployment.extra_node("plaintext")

    # Execute
    child = deployment.start_node(plain, insecure=True, max_retries=3)
    code = child.popen.wait(timeout=120)

    # Assert
    assert code != 0
    assert "Connection attempt failed" in child.log_text()
    assert online(deployment) == 3


# ------------------------------------------------------------------------------ a deletion mid-run


def test_the_deletion_filed_mid_run_is_served_with_matching_receipts(served: RunOutcome) -> None:
    # Prepare
    assert served.completed, served.status
    assert served.node_receipt is not None and served.server_receipt is not None and served.forget_ids_file
    ids = np.loadtxt(served.forget_ids_file, dtype=np.int64, comments="#")

    # Execute
    node_receipt = json.loads(served.node_receipt.read_text())
    server_receipt = json.loads(served.server_receipt.read_text())
    results = json.loads(served.results.read_text())

    # Assert: the same receipt on both sides (the server's without the count), proving which ids
    # (by a hash keyed with the node's secret) and which models, with the node's verification
    assert server_receipt == {k: v for k, v in node_receipt.items() if k != "num_samples"}
    assert node_receipt["request_id"] == served.request_id and node_receipt["kind"] == "sample"
    assert node_receipt["num_samples"] == len(ids) > 0
    queue = DeletionQueue(deployment_state(served))
    assert queue.ids_match_receipt(served.request_id or "", ids)
    assert node_receipt["server_round"] == 2 and node_receipt["method"] == "partial_amnesiac"
    assert {"check_FA", "check_passed", "TA", "TA_before"} <= set(node_receipt["metrics"])
    assert node_receipt["metrics"]["check_passed"] == 1.0
    assert node_receipt["model_digest_before"] != node_receipt["model_digest_after"]
    (phase,) = [e for e in results["events"] if e["type"] == "unlearning"]
    assert phase["status"] == "served" and phase["partition_id"] == FORGET_NODE
    assert "sample_ids" not in json.dumps(server_receipt)  # the server holds a hash, never the ids


def test_the_node_lists_the_receipt_and_never_trains_on_the_samples_again(
    served: RunOutcome, deployment: LocalDeployment, config: FederationConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    node = deployment.nodes[FORGET_NODE]
    ids = np.loadtxt(served.forget_ids_file or "", dtype=np.int64, comments="#")

    # Execute: what the site's data officer runs, and what the node holds now
    code = receipts.main(["--state-dir", str(node.state_dir), "--json"])
    listing = json.loads(capsys.readouterr().out)
    site = ClientSite.open(config=config, partition_id=FORGET_NODE, state_dir=node.state_dir, lineage="inspect")
    lineage = json.loads(served.results.read_text())["summary"]["lineage"]
    store = HistoryStore.open_existing(
        node.state_dir / "history" / lineage, model=site.build_model(), config=config.history
    )

    # Assert
    assert code == 0 and listing["pending"] == []
    (row,) = listing["served"]
    assert row["request_id"] == served.request_id and row["ids_verified"] is True
    assert sorted(site.forgotten_ids().tolist()) == sorted(ids.tolist())
    assert not np.isin(site.retained().ids(), ids).any()
    assert store.affected_steps(ids) == []  # their history steps are purged: never subtracted twice


def test_the_forgotten_samples_are_no_longer_recognised(
    served: RunOutcome, deployment: LocalDeployment, config: FederationConfig, exclusive_label: int
) -> None:
    # Prepare: the server's model before the phase and the final model (= after the phase,
    # which ran after the last round); the forgotten samples: every sample of a class that
    # no other node holds, so the retrained federation (RT) would recognise none of them
    node = deployment.nodes[FORGET_NODE]
    site = ClientSite.open(config=config, partition_id=FORGET_NODE, state_dir=node.state_dir, lineage="inspect")
    before = torch.load(deployment.server_dir / "models" / f"before-{served.request_id}.pt", weights_only=True)
    after = torch.load(deployment.server_dir / "model.pt", weights_only=True)
    receipt = json.loads((served.node_receipt or Path()).read_text())
    forget = site.dataset.subset_by_ids(site.forgotten_ids())
    assert set(forget.labels.tolist()) == {exclusive_label}
    assert (state_digest(before), state_digest(after)) == (
        receipt["model_digest_before"],
        receipt["model_digest_after"],
    )

    # Execute
    fa_before = accuracy(site.build_model(before), forget)
    fa_after = accuracy(site.build_model(after), forget)

    # Assert: the class was learned, and the unlearned model no longer recognises its samples
    # (FA moved from well above to near RT's 0); the node's own verification reported the same FA.
    assert fa_before >= 0.3
    assert fa_after <= 0.2 and fa_after <= fa_before - 0.2
    assert receipt["metrics"]["check_FA"] == pytest.approx(fa_after)
    assert receipt["metrics"]["TA"] >= receipt["metrics"]["TA_before"] - config.unlearn.max_ta_drop


# ------------------------------------------------------------------------------ teardown


def test_every_started_process_is_stopped(deployment: LocalDeployment) -> None:
    # Execute
    survivors = deployment.stop()

    # Assert: no process carrying the deployment's tag is alive, every direct child has an
    # exit status, and the ports are free again
    assert survivors == [] and tagged_pids(deployment.supervisor.tag) == []
    assert all(child.popen.returncode is not None for child in deployment.supervisor.children)
    assert len(deployment.supervisor.children) >= 3 + 1 + 2  # SuperLink, nodes, the two intruders, CLI calls
    for port in (deployment.superlink_port, *(node.port for node in deployment.nodes)):
        with socket.socket() as sock:  # SO_REUSEADDR: connections in TIME_WAIT are fine, a listener is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
