"""End to end: clients file deletions, the server unlearns, and forgetting is measured.

Real Flower simulations on small real-MNIST subsets, one per deletion kind:
- IID federation: a sample-level deletion on client 0 and a client-level deletion of a
  backdoored client 3, compared with the retrained federation (RT);
- pathological non-IID federation (two classes per client): client 1 deletes one of its
  classes, which no other client holds, so RT cannot predict it at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedunlearn.config import DataConfig, FederationConfig
from fedunlearn.data import build_federated_data
from fedunlearn.history import HistoryStore
from fedunlearn.metrics import accuracy
from fedunlearn.site import ClientSite
from simulations.compare import ground_truth, load_model
from simulations.unlearning_run import run_with_retrain

pytestmark = pytest.mark.e2e

SMALL = {
    "samples-per-client": 800,
    "test-samples": 1000,
    "model": "mlp",
    "batch-size": 32,
    "lr": 0.1,
    "num-server-rounds": 3,
    "keep-ratio": 0.1,
    "unlearn-method": "partial_amnesiac",
    "client-threads": 1,
}


def federation(tmp: Path, data_root: Path, **extra: Any) -> FederationConfig:
    values = {**SMALL, "data-root": str(data_root), "out-dir": str(tmp), "state-root": str(tmp / "state"), **extra}
    return FederationConfig.from_run_config(values)


@pytest.fixture(scope="module")
def iid_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[FederationConfig, dict[str, Any]]:
    config = federation(
        tmp_path_factory.mktemp("iid"),
        data_root,
        **{
            "num-clients": 4,
            "deletion-schedule": "3:0:sample:0.2;3:3:client",
            "backdoor-client": 3,
        },
    )
    return config, run_with_retrain(config, cpus=2)


def test_sample_and_client_deletions_are_served_with_receipts(iid_run: tuple[FederationConfig, dict[str, Any]]) -> None:
    config, report = iid_run
    phases = [e for e in report["events"] if e["type"] == "unlearning"]
    assert sorted(e["status"] for e in phases) == ["served", "served"]
    receipts = {e["request_id"]: e["receipt"] for e in phases}
    assert receipts["sched-r3-c0-sample-0p2"]["num_samples"] == 160  # 20% of 800
    assert receipts["sched-r3-c3-client-None"]["kind"] == "client"
    for receipt in receipts.values():  # receipts prove which model changed, never which ids
        assert receipt["model_digest_before"] != receipt["model_digest_after"]
        assert len(receipt["ids_sha256"]) == 64
    unlearn_state = Path(config.out_dir or "") / "unlearn" / "state"
    assert (unlearn_state / "client-0" / "receipts" / "sched-r3-c0-sample-0p2.json").exists()


def test_sample_deletion_purges_history_and_excludes_samples(iid_run: tuple[FederationConfig, dict[str, Any]]) -> None:
    config, _ = iid_run
    out = Path(config.out_dir or "") / "unlearn"
    main_config = FederationConfig.from_run_config({**config.to_run_config(), "state-root": str(out / "state")})
    site = ClientSite.open(config=main_config, partition_id=0, state_dir=out / "state" / "client-0", lineage="inspect")
    forgotten = site.forgotten_ids()
    assert len(forgotten) == 160
    assert not np.isin(site.retained().ids(), forgotten).any()
    history_dir = next((out / "state" / "client-0" / "history").iterdir())
    store = HistoryStore.for_model(history_dir, model=site.build_model(), config=main_config.history)
    assert store.affected_steps(forgotten) == []  # spent once: a second request cannot subtract again


def test_client_deletion_removes_backdoor_and_keeps_accuracy(iid_run: tuple[FederationConfig, dict[str, Any]]) -> None:
    _, report = iid_run
    before, after, rt = (report["metrics"][k] for k in ("before", "unlearned", "RT"))
    assert before["backdoor_asr"] > 0.2  # the backdoor worked
    assert after["backdoor_asr"] < before["backdoor_asr"] / 2  # unlearning removed most of it
    assert after["backdoor_asr"] <= rt["backdoor_asr"] + 0.1  # close to RT's level
    assert abs(after["RA"] - rt["RA"]) < 0.06 and abs(after["TA"] - rt["TA"]) < 0.06
    assert report["metrics"]["avg_gap_rt"] < report["metrics"]["avg_gap_rt_before"]  # moved toward RT


def test_class_deletion_forgets_a_class_only_that_client_held(tmp_path: Path, data_root: Path) -> None:
    # Prepare: 5 clients with 2 classes each (every class on exactly one client).
    data = DataConfig(
        dataset="mnist",
        root=str(data_root),
        num_clients=5,
        partition="by_class",
        classes_per_client=2,
        samples_per_client=800,
        test_samples=1000,
    )
    partition = build_federated_data(data, seed=0).partition
    labels = build_federated_data(data, seed=0).bundle.train.labels.numpy()
    label = int(np.unique(labels[partition.for_client(1)])[0])
    held_elsewhere = [k for k in (0, 2, 3, 4) if label in set(labels[partition.for_client(k)].tolist())]
    assert held_elsewhere == []
    config = federation(
        tmp_path,
        data_root,
        **{
            "num-clients": 5,
            "partition": "by_class",
            "classes-per-client": 2,
            "deletion-schedule": f"3:1:class:{label}",
        },
    )

    # Execute (RT is known without running it: no client keeps this class, so RT never predicts it)
    report = run_with_retrain(config, cpus=2, with_rt=False)

    # Assert: the class is forgotten, the other clients' data is still recognised.
    (phase,) = [e for e in report["events"] if e["type"] == "unlearning"]
    assert phase["status"] == "served"
    main = FederationConfig.from_run_config(
        {**config.to_run_config(), "state-root": str(tmp_path / "unlearn" / "state")}
    )
    truth = ground_truth(main)
    before = load_model(main, next((tmp_path / "unlearn" / "models").glob("before-*.pt")))
    after = load_model(main, tmp_path / "unlearn" / "model.pt")
    assert accuracy(before, truth.forget) > 0.5  # the class was learned ...
    assert accuracy(after, truth.forget) < 0.2  # ... and is forgotten (RT: ~0)
    assert accuracy(after, truth.retain) > accuracy(before, truth.retain) - 0.1
