"""Deployment helpers without Flower: credentials, the staged app, supervised processes."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.config import unflatten_dict

from deploy.app_bundle import app_pyproject, stage_app, toml_value
from deploy.certs import make_local_credentials, make_node_key
from deploy.local import NodeSpec, parse_json_output
from deploy.processes import (
    Interrupted,
    Supervisor,
    free_ports,
    interrupt_on_signals,
    tagged_pids,
    wait_for_port,
)
from deploy.run import DeletionPlan, RunWatch, round_finished
from fedunlearn.config import FederationConfig
from fedunlearn.run_config import config_from_sections

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ credentials


def test_local_credentials_chain_to_the_ca_and_keys_are_private(tmp_path: Path) -> None:
    # Execute
    creds = make_local_credentials(tmp_path / "certs", node_names=["node-0", "node-1"])

    # Assert: the server certificate is signed by the CA and names the loopback addresses
    ca = x509.load_pem_x509_certificate(creds.server.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server.server_cert.read_bytes())
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    ca_key.verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1"}
    # ... node keys are OpenSSH ECDSA P-384 pairs; private files are 0600; the folder ignores itself
    for node in creds.nodes:
        private = serialization.load_ssh_private_key(node.private_key.read_bytes(), None)
        public = serialization.load_ssh_public_key(node.public_key.read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
        assert stat.S_IMODE(node.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.server.ca_key.stat().st_mode) == 0o600
    assert (tmp_path / "certs" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_existing_credentials_are_never_replaced_silently(tmp_path: Path) -> None:
    # Prepare
    first = make_node_key(tmp_path, name="hospital-a")
    before = first.private_key.read_bytes()

    # Execute / Assert
    with pytest.raises(FileExistsError, match="hospital-a.key"):
        make_node_key(tmp_path, name="hospital-a")
    with pytest.raises(FileExistsError, match="hospital-a"):
        make_local_credentials(tmp_path, node_names=["hospital-a"])
    assert first.private_key.read_bytes() == before
    assert not (tmp_path / "ca.key").exists()  # all or nothing


# ------------------------------------------------------------------------------ staged app


def from_flat(flat: dict[str, object]) -> FederationConfig:
    """A config from flat dotted run-config keys, as the ServerApp reads them."""
    return config_from_sections(unflatten_dict(flat))


def test_staged_pyproject_carries_the_deployments_config_including_none_defaults() -> None:
    # Prepare: keys the repository's [tool.flwr.app.config] cannot list (their default is None)
    config = from_flat(
        {
            "run.out-dir": '/srv/x "quoted" \\ dir',
            "data.samples-per-client": 300,
            "data.test-samples": 500,
            "data.num-clients": 3,
            "train.lr": 1e-05,
            "unlearn.sfr_on.iters": 30,
        }
    )
    source = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

    # Execute
    text = app_pyproject(source, config)

    # Assert
    parsed = tomllib.loads(text)
    assert from_flat(parsed["tool"]["flwr"]["app"]["config"]) == config
    assert parsed["tool"]["flwr"]["app"]["components"] == source["tool"]["flwr"]["app"]["components"]
    assert parsed["project"]["name"] == source["project"]["name"]
    assert parsed["project"]["license"] == source["project"]["license"]["text"]


def test_toml_values_round_trip() -> None:
    values = {"s": 'a"b\\c\nä', "t": True, "i": -3, "f": 0.1, "l": ["x", "y"]}
    text = "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
    assert tomllib.loads(text) == values


def test_staged_app_holds_code_and_pyproject_only(tmp_path: Path) -> None:
    # Execute
    target = stage_app(tmp_path / "app", from_flat({"run.out-dir": str(tmp_path / "server")}))

    # Assert
    files = [p.relative_to(target) for p in target.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".py", ".toml"} and Path("pyproject.toml") in files
    assert {Path("server/server_app.py"), Path("clients/client_app.py"), Path("fedunlearn/site.py")} <= set(files)
    assert {p.parts[0] for p in files if p.suffix == ".py"} == {"fedunlearn", "clients", "server"}


# ------------------------------------------------------------------------------ processes

ESCAPE = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
time.sleep(60)
"""


def test_supervisor_stops_children_and_descendants_that_left_the_group(tmp_path: Path) -> None:
    # Prepare: a child whose own child escapes into a new session (as Flower's SuperExec does)
    supervisor = Supervisor(log_dir=tmp_path, env=os.environ)
    child = supervisor.start("escaper", [sys.executable, "-c", ESCAPE])
    deadline = time.monotonic() + 10
    while len(tagged_pids(supervisor.tag)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(tagged_pids(supervisor.tag)) == 2

    # Execute
    survivors = supervisor.stop_all(grace=5)

    # Assert
    assert survivors == [] and tagged_pids(supervisor.tag) == []
    assert child.popen.returncode == -signal.SIGTERM


def test_supervisor_run_returns_code_and_output(tmp_path: Path) -> None:
    supervisor = Supervisor(log_dir=tmp_path, env=os.environ)
    code, output = supervisor.run("echo", [sys.executable, "-c", "print('hello'); raise SystemExit(3)"], timeout=30)
    assert (code, output.strip()) == (3, "hello")


def test_waiting_for_a_port_fails_early_when_the_program_exits(tmp_path: Path) -> None:
    # Prepare
    supervisor = Supervisor(log_dir=tmp_path, env=os.environ)
    child = supervisor.start("dies", [sys.executable, "-c", "print('bad config'); raise SystemExit(2)"])
    (port,) = free_ports(1)

    # Execute / Assert
    with pytest.raises(RuntimeError, match="dies exited with code 2 before listening"):
        wait_for_port("127.0.0.1", port, timeout=30, child=child)
    supervisor.stop_all()


def test_free_ports_are_distinct() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(1024 <= p < 65536 for p in ports)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signals_become_an_interrupt_so_cleanup_runs(sig: signal.Signals) -> None:
    # Prepare
    before = signal.getsignal(sig)

    # Execute / Assert
    with pytest.raises(Interrupted, match=sig.name), interrupt_on_signals():
        os.kill(os.getpid(), sig)
        time.sleep(5)
    assert signal.getsignal(sig) is before


# ------------------------------------------------------------------------------ run helpers


def test_json_output_is_found_among_other_lines() -> None:
    assert parse_json_output('Using SuperLink: x\n{\n "success": true, "node-id": 7\n}\n') == {
        "success": True,
        "node-id": 7,
    }


def test_round_is_finished_when_the_server_logged_it_or_the_node_history_lists_it(tmp_path: Path) -> None:
    node = NodeSpec(0, "node-0", 1, tmp_path)
    assert round_finished(node, run_id="5", server_round=1, server_log="[ROUND 1] train loss 2.2")
    assert not round_finished(node, run_id="5", server_round=2, server_log="[ROUND 1] train loss 2.2")
    assert not round_finished(node, run_id=None, server_round=1, server_log="")


def test_deletion_plans_are_validated() -> None:
    with pytest.raises(ValueError, match="needs a count, a label"):
        DeletionPlan(0, "sample")
    with pytest.raises(ValueError, match="count must be >= 1"):
        DeletionPlan(0, "sample", count=0)
    with pytest.raises(ValueError, match="label must be >= 0"):
        DeletionPlan(0, "class", label=-2)


def test_a_sample_plan_draws_its_ids_from_the_node_files_optionally_within_a_class(tmp_path: Path) -> None:
    # Prepare: the files a node writes (ids and aligned labels)
    np.save(tmp_path / "sample_ids.npy", np.arange(100, 120))
    np.save(tmp_path / "sample_labels.npy", np.arange(20) % 4)

    # Execute
    of_class = DeletionPlan(0, "sample", label=1).choose_ids(tmp_path)
    some = DeletionPlan(0, "sample", count=5, seed=3).choose_ids(tmp_path)

    # Assert
    assert of_class.tolist() == [101, 105, 109, 113, 117]
    assert len(set(some.tolist())) == 5 and set(some.tolist()) <= set(range(100, 120))
    assert some.tolist() == sorted(some.tolist())


def test_run_watch_echoes_lines_and_finds_the_run_id(tmp_path: Path) -> None:
    # Prepare: a stand-in for `flwr run --stream`
    supervisor = Supervisor(log_dir=tmp_path, env=os.environ)
    script = "print('Successfully started run 4242', flush=True); print('[ROUND 1] train loss 1.0')"
    echoed: list[str] = []
    watch = RunWatch(supervisor.start("flwr-run", [sys.executable, "-c", script]), echoed.append)

    # Execute
    deadline = time.monotonic() + 30
    while watch.poll() and time.monotonic() < deadline:
        time.sleep(0.05)

    # Assert
    assert watch.run_id == "4242"
    assert echoed == ["Successfully started run 4242", "[ROUND 1] train loss 1.0"]
    assert round_finished(NodeSpec(0, "n", 1, tmp_path), run_id=watch.run_id, server_round=1, server_log=watch.text)
