"""End to end: `flwr run .` out of the box, on Flower's default local federation (2 SuperNodes).

A fresh Flower home (no configuration), the repository as the app; the federation's size
comes from Flower (each SuperNode's node_config), not from the run config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_processes_mentioning(text: str) -> None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if text in line:
                try:
                    os.kill(int(entry.name), signal.SIGTERM)
                except OSError:
                    pass


def test_flwr_run_trains_on_the_default_local_federation_and_writes_results(tmp_path: Path, data_root: Path) -> None:
    home, state = tmp_path / "flwr-home", tmp_path / "state"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FEDUNLEARN_DATA": str(data_root),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    overrides = (
        f"data.samples-per-client=200 data.test-samples=500 train.rounds=2 train.model='mlp' run.state-root='{state}'"
    )
    try:
        done = subprocess.run(
            ["flwr", "run", ".", "--run-config", overrides, "--stream"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop_processes_mentioning(str(home))  # the local SuperLink flwr started stays up otherwise
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (run,) = list((tmp_path / "runs").iterdir())  # results beside the state root, named by the lineage
    results = json.loads((run / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert sorted(c["partition_id"] for c in results["rounds"][-1]["clients"]) == [0, 1]  # Flower's 2 SuperNodes
    assert (run / "model.pt").exists()
