"""A loopback federation on Flower's deployment engine: one SuperLink, N SuperNodes, 127.0.0.1.

Everything lives under one folder::

    certs/            CA, SuperLink certificate and key, one key pair per node (git-ignored)
    flwr-home/        FLWR_HOME of the SuperLink and the ``flwr`` CLI (config.toml, apps)
    nodes/node-K/     one site: flwr-home/ (its FAB copies), state/ (history, requests,
                      receipts), forget-ids.txt (a deletion filed by deploy-local)
    server/           the ServerApp's out-dir: results.json, model.pt, models/, receipts/
    app/              the staged app ``flwr run`` packs into the FAB (code only)
    logs/             one log per started program

With TLS (the default) the SuperLink runs with ``--enable-supernode-auth`` and only nodes
whose public keys were registered (``flwr supernode register``) may join. Every program runs
under a ``Supervisor``: in its own process group, and stopped (with everything it spawned)
when the deployment is closed, also after an error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from deploy.certs import LocalCredentials, make_local_credentials, make_node_key
from deploy.processes import Child, Supervisor, free_ports, wait_for_port

HOST = "127.0.0.1"
CONNECTION = "fedunlearn-local"
QUIET_FLOWER = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its partition, Runtime API port and folders."""

    partition_id: int
    name: str
    port: int
    home: Path

    @property
    def state_dir(self) -> Path:
        """The site's state directory (history, requests, receipts)."""
        return self.home / "state"


def parse_json_output(text: str) -> Any:
    """Return the JSON document a ``flwr ... --format json`` command printed (other lines ignored)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in the command output:\n{text}")
    return json.JSONDecoder().raw_decode(text[start:])[0]


class LocalDeployment:
    """Start, inspect and stop a SuperLink and its SuperNodes under ``root`` (a context manager)."""

    def __init__(self, root: Path, *, num_nodes: int, data_root: Path, tls: bool = True) -> None:
        self.root, self.data_root, self.tls = root.resolve(), data_root.resolve(), tls
        ports = free_ports(num_nodes + 1, host=HOST)
        self.superlink_port = ports[0]
        self.nodes = [
            NodeSpec(i, f"node-{i}", ports[i + 1], self.root / "nodes" / f"node-{i}") for i in range(num_nodes)
        ]
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            **QUIET_FLOWER,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "FLWR_HOME": str(self.root / "flwr-home"),
            "FEDUNLEARN_DATA": str(self.data_root),
        }
        self.supervisor = Supervisor(log_dir=self.root / "logs", env=env)
        self.superlink: Child | None = None
        self.node_children: dict[str, Child] = {}
        self.credentials: LocalCredentials | None = None
        self._calls = 0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> list[int]:
        """Stop every program started so far; returns pids that survived (should be none)."""
        return self.supervisor.stop_all()

    @property
    def server_dir(self) -> Path:
        """The ServerApp's out-dir (results, models, receipts)."""
        return self.root / "server"

    @property
    def address(self) -> str:
        """The SuperLink's ``host:port``."""
        return f"{HOST}:{self.superlink_port}"

    def start(self, *, timeout: float = 180.0) -> None:
        """Credentials, SuperLink, key registration, SuperNodes; returns once all nodes are online."""
        self.start_superlink(timeout=timeout)
        if self.tls:
            self.register_nodes(self.nodes, timeout=timeout)
        for node in self.nodes:
            self.start_node(node)
        self.wait_online(len(self.nodes), timeout=timeout)

    # ------------------------------------------------------------------ SuperLink
    def start_superlink(self, *, timeout: float = 120.0) -> Child:
        """Write credentials and the CLI connection, start the SuperLink, wait for its port."""
        argv = [
            "flower-superlink",
            "--host",
            HOST,
            "--port",
            str(self.superlink_port),
            "--disable-runtime-dependency-installation",
        ]
        if self.tls:
            self.credentials = make_local_credentials(self.root / "certs", node_names=[n.name for n in self.nodes])
            server = self.credentials.server
            argv += [
                "--ssl-ca-certfile",
                str(server.ca_cert),
                "--ssl-certfile",
                str(server.server_cert),
                "--ssl-keyfile",
                str(server.server_key),
                "--enable-supernode-auth",
            ]
        else:
            argv.append("--insecure")
        self._write_cli_config()
        self.superlink = self.supervisor.start("superlink", argv)
        wait_for_port(HOST, self.superlink_port, timeout=timeout, child=self.superlink)
        return self.superlink

    def _write_cli_config(self) -> None:
        """``$FLWR_HOME/config.toml`` with one connection, also the default (nothing else is ever started)."""
        security = (
            f"root-certificates = {json.dumps(str(self.credentials.server.ca_cert))}"
            if self.credentials
            else "insecure = true"
        )
        home = self.root / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}\n',
            encoding="utf-8",
        )

    def flwr(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run ``flwr <args>`` against this deployment's connection; returns (exit code, output)."""
        self._calls += 1
        return self.supervisor.run(f"flwr-{self._calls:03d}-{args[0]}", ["flwr", *args], timeout=timeout)

    # ------------------------------------------------------------------ SuperNodes
    def node_key(self, node: NodeSpec) -> Path:
        """Return the node's private key (making a fresh pair for nodes the credentials do not know)."""
        folder = self.root / "certs"
        if not (folder / f"{node.name}.key").exists():
            make_node_key(folder, name=node.name)
        return folder / f"{node.name}.key"

    def register_nodes(self, nodes: list[NodeSpec], *, timeout: float = 120.0) -> dict[str, int]:
        """``flwr supernode register`` each node's public key (concurrently); returns node ids by name."""
        children = {}
        for node in nodes:
            self.node_key(node)
            self._calls += 1
            argv = [
                "flwr",
                "supernode",
                "register",
                str(self.root / "certs" / f"{node.name}.pub"),
                CONNECTION,
                "--name",
                node.name,
                "--format",
                "json",
            ]
            children[node.name] = self.supervisor.start(f"flwr-{self._calls:03d}-register-{node.name}", argv)
        ids = {}
        for name, child in children.items():
            child.popen.wait(timeout=timeout)
            reply = parse_json_output(child.log_text())
            if not reply.get("success"):
                raise RuntimeError(f"registering {name} failed: {reply.get('error-message', child.tail())}")
            ids[name] = int(reply["node-id"])
        return ids

    def extra_node(self, name: str, *, partition_id: int = 0) -> NodeSpec:
        """Describe a node outside the federation's list (for refusal tests), with a free port."""
        return NodeSpec(partition_id, name, free_ports(1, host=HOST)[0], self.root / "nodes" / name)

    def start_node(
        self, node: NodeSpec, *, insecure: bool = False, authenticate: bool = True, max_retries: int | None = None
    ) -> Child:
        """Start a SuperNode for ``node`` (TLS and its key unless ``insecure``)."""
        for path in (node.state_dir, self.data_root):
            if '"' in str(path):
                raise ValueError(f"paths passed in --node-config cannot contain '\"': {path}")
        node_config = (
            f"partition-id={node.partition_id} num-partitions={len(self.nodes)} "
            f"state-dir={json.dumps(str(node.state_dir))} data-root={json.dumps(str(self.data_root))}"
        )
        argv = ["flower-supernode", "--superlink", self.address, "--port", str(node.port), "--node-config", node_config]
        if insecure or not self.tls:
            argv.append("--insecure")
        else:
            assert self.credentials is not None
            argv += ["--root-certificates", str(self.credentials.server.ca_cert)]
            if authenticate:
                argv += ["--auth-supernode-private-key", str(self.node_key(node))]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        node.state_dir.mkdir(parents=True, exist_ok=True)
        child = self.supervisor.start(node.name, argv, env={"FLWR_HOME": str(node.home / "flwr-home")})
        self.node_children[node.name] = child
        return child

    def node_statuses(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: one row per registered node (node-id, status, ...)."""
        code, output = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        reply = parse_json_output(output)
        if code != 0 or not reply.get("success"):
            raise RuntimeError(f"flwr supernode list failed (exit {code}):\n{output}")
        return list(reply.get("nodes", []))

    def wait_online(self, count: int, *, timeout: float = 120.0) -> None:
        """Wait until ``count`` nodes are online (as ``flwr supernode list`` says).

        Fails early if the SuperLink or a node exits. Without TLS there is no registry of keys
        to ask, so it only waits briefly.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if not self.tls:
                time.sleep(3.0)
                return
            if sum(row.get("status") == "online" for row in self.node_statuses()) >= count:
                return
            time.sleep(1.0)
        raise TimeoutError(
            f"fewer than {count} SuperNodes came online within {timeout:.0f} s; see {self.root / 'logs'}"
        )

    def check_alive(self) -> None:
        """Raise, with the log tail, if the SuperLink or a federation node has exited."""
        watched = [self.superlink] + [self.node_children.get(n.name) for n in self.nodes]
        for child in watched:
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited with code {child.popen.returncode}:\n{child.tail()}")

    # ------------------------------------------------------------------ runs
    def start_run(self, app: Path) -> Child:
        """``flwr run <app> <connection> --stream`` (its output is the ServerApp's log)."""
        return self.supervisor.start("flwr-run", ["flwr", "run", str(app), CONNECTION, "--stream"], cwd=self.root)

    def run_status(self, run_id: str) -> str:
        """Return the run's status as ``flwr ls`` reports it (e.g. ``finished:completed``)."""
        code, output = self.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        reply = parse_json_output(output)
        runs = reply.get("runs", [])
        if code != 0 or not runs:
            raise RuntimeError(f"flwr ls --run-id {run_id} failed (exit {code}):\n{output}")
        return str(runs[0].get("status", "unknown"))


RUN_ID = re.compile(r"Successfully started run (\d+)")
