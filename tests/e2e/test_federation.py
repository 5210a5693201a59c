"""End to end: a real Flower simulation on a small real-MNIST subset trains and records."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedunlearn.config import FederationConfig
from fedunlearn.history import HistoryStore
from fedunlearn.site import ClientSite
from simulations.simulate import run_federation

pytestmark = pytest.mark.e2e


def test_three_clients_two_rounds_beat_chance_and_record_histories(tmp_path: Path, data_root: Path) -> None:
    # Prepare: 3 clients x 600 real MNIST images, 2 rounds, history keep ratio 0.1.
    config = FederationConfig.from_run_config(
        {
            "num-clients": 3,
            "num-server-rounds": 2,
            "samples-per-client": 600,
            "test-samples": 1000,
            "model": "mlp",
            "batch-size": 32,
            "lr": 0.1,
            "keep-ratio": 0.1,
            "data-root": str(data_root),
            "out-dir": str(tmp_path / "out"),
            "state-root": str(tmp_path / "state"),
            "client-threads": 1,
        }
    )

    # Execute
    results = run_federation(config, cpus=2, progress=False)

    # Assert: accuracy far above chance (10 classes), every client kept a pruned history of
    # both rounds with the FedAvg weights the server sent (1/3 each: equal shares).
    assert results["rounds"][-1]["test_accuracy"] > 0.6
    for pid in range(3):
        site = ClientSite.open(
            config=config, partition_id=pid, state_dir=tmp_path / "state" / f"client-{pid}", lineage="inspect"
        )
        run_dirs = list((tmp_path / "state" / f"client-{pid}" / "history").iterdir())
        assert len(run_dirs) == 1
        store = HistoryStore.for_model(run_dirs[0], model=site.build_model(), config=config.history)
        usage = store.usage()
        assert [r.round for r in usage.rounds] == [1, 2]
        assert all(r.weight == pytest.approx(1 / 3) for r in usage.rounds)
        assert 0.1 < usage.ratio < 0.3  # ~ keep_ratio * (4 + 4) / 4 plus ids and headers
        assert len(store.affected_steps(site.dataset.ids()[:5])) > 0
    assert (tmp_path / "out" / "model.pt").exists()
