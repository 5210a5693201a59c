"""The per-client history budget: at the cap the oldest rounds go, on record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.common.config import unflatten_dict
from torch import nn

from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.deletion import DeletionRequest
from fedunlearn.errors import HistoryError
from fedunlearn.history import HistoryStore
from fedunlearn.run_config import config_from_sections
from fedunlearn.site import ClientSite, enforce_budget, evicted_rounds
from fedunlearn.site_unlearning import fast_correction
from fedunlearn.training import train_local


def recorded_store(directory: Path, rounds: int) -> HistoryStore:
    generator = torch.Generator().manual_seed(0)
    data = IndexedDataset(
        torch.randn(64, 4, generator=generator), torch.randint(0, 3, (64,), generator=generator), torch.arange(64), 3
    )
    model = nn.Linear(4, 3)
    store = HistoryStore.for_model(directory, model=model, config=HistoryConfig(keep_ratio=0.5))
    for r in range(1, rounds + 1):
        with store.record_round(r) as recorder:
            train_local(model, data, config=TrainConfig(batch_size=16, lr=0.1), seed=r, observer=recorder)
    return store


def test_the_oldest_rounds_are_dropped_until_the_history_fits(tmp_path: Path) -> None:
    store = recorded_store(tmp_path / "h", rounds=5)
    per_round = store.usage().rounds[0].bytes
    budget = store.usage().disk_bytes - 2 * per_round  # room for about three rounds

    dropped = enforce_budget(store, max_bytes=budget)

    assert dropped == [1, 2]
    assert store.rounds() == [3, 4, 5]
    assert store.usage().disk_bytes <= budget
    assert evicted_rounds(tmp_path / "h") == {1, 2}  # on record: a request can tell them from lost ones


def test_a_history_within_budget_is_left_alone_and_the_newest_round_always_stays(tmp_path: Path) -> None:
    store = recorded_store(tmp_path / "h", rounds=3)
    assert enforce_budget(store, max_bytes=store.usage().disk_bytes) == []
    assert enforce_budget(store, max_bytes=1) == [1, 2]
    assert store.rounds() == [3]
    assert evicted_rounds(tmp_path / "h") == {1, 2}


def digits_site(root: Path) -> ClientSite:
    flat = {
        "data.dataset": "digits",
        "train.model": "mlp",
        "data.num-clients": 2,
        "data.samples-per-client": 80,
        "data.test-samples": 40,
        "run.state-root": str(root),
        "data.root": str(root / "no-data"),
        "train.batch-size": 20,
        "train.threads": 1,
        "unlearn.method": "partial_amnesiac",
    }
    config = config_from_sections(unflatten_dict(flat))
    return ClientSite.open(config=config, partition_id=0, state_dir=root / "client-0", lineage="run")


def test_a_client_whose_updates_never_entered_the_model_has_nothing_to_undo(tmp_path: Path) -> None:
    site = digits_site(tmp_path)
    model = site.build_model()  # trained off the record, so it knows the samples to forget
    train_local(model, site.dataset, config=TrainConfig(batch_size=20, lr=0.1, local_epochs=30), seed=0)
    state = model.state_dict()
    request = DeletionRequest.new(kind="sample", sample_ids=site.dataset.ids()[:3].tolist(), request_id="r")

    never_sampled = fast_correction(site, state, request, outer_step=0, remain_fisher=None, trained_rounds=frozenset())
    assert all(not v.any() for v in never_sampled.correction.delta.values())
    assert "never entered" in never_sampled.correction.info["skipped"]

    # The server says round 1 entered the model, or says nothing: without that history, no receipt.
    for said in (frozenset({1}), None):
        with pytest.raises(HistoryError, match="history"):
            fast_correction(site, state, request, outer_step=0, remain_fisher=None, trained_rounds=said)
