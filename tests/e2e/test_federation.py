"""End to end: a real Flower simulation on a small real-MNIST subset trains, records, and is
reproducible: the same command with the same seed gives the same model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.common.config import unflatten_dict

from fedunlearn.history import HistoryStore
from fedunlearn.run_config import config_from_sections
from fedunlearn.site import ClientSite

pytestmark = pytest.mark.e2e

SMALL = [
    "--dataset",
    "mnist",
    "--model",
    "mlp",
    "--clients",
    "3",
    "--rounds",
    "2",
    "--samples-per-client",
    "600",
    "--test-samples",
    "1000",
    "--batch-size",
    "32",
    "--lr",
    "0.1",
    "--keep-ratio",
    "0.1",
    "--cpus",
    "2",
]


def simulate(out: Path, data_root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "simulations.cli",
        "simulate",
        *SMALL,
        "--data-root",
        str(data_root),
        "--out",
        str(out),
    ]
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=600)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for out in (first, second):
        done = simulate(out, data_root)
        assert done.returncode == 0, done.stderr[-2000:]
    return first, second


def test_three_clients_two_rounds_beat_chance_and_record_histories(runs: tuple[Path, Path], data_root: Path) -> None:
    out = runs[0]
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"][-1]["test_accuracy"] > 0.6  # 10 classes: far above chance
    config = config_from_sections(unflatten_dict(results["config"]))
    for pid in range(3):
        state_dir = out / "state" / f"client-{pid}"
        site = ClientSite.open(config=config, partition_id=pid, state_dir=state_dir, lineage="inspect")
        (history_dir,) = list((state_dir / "history").iterdir())
        store = HistoryStore.open_existing(history_dir, model=site.build_model(), config=config.history)
        usage = store.usage()
        assert [r.round for r in usage.rounds] == [1, 2]
        assert all(r.weight == pytest.approx(1 / 3) for r in usage.rounds)  # equal shares: FedAvg weights 1/3
        assert 0.1 < usage.ratio < 0.3  # ~ keep_ratio * (4 + 4) / 4 plus ids and headers
        assert len(store.affected_steps(site.dataset.ids()[:5])) > 0
    assert (out / "training.png").exists()


def test_the_same_command_and_seed_give_the_same_model(runs: tuple[Path, Path]) -> None:
    first, second = runs
    assert digest(first / "model.pt") == digest(second / "model.pt")


def test_another_seed_gives_another_model(runs: tuple[Path, Path], tmp_path: Path, data_root: Path) -> None:
    done = simulate(tmp_path / "other", data_root, "--seed", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert digest(tmp_path / "other" / "model.pt") != digest(runs[0] / "model.pt")
