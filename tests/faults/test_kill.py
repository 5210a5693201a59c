"""Durability: a client process killed with SIGKILL at random points, again and again.

The main process plays the server and the data owner (``kill_campaign.py``); the client
process trains rounds with its HistoryStore and serves deletion requests through
``fedunlearn.site`` / ``fedunlearn.site_unlearning`` (``client_process.py``). Half the kills
come from a timer at a random moment of a command, half exactly before or after an
``os.replace`` (the commit point of every atomic write); some hit a restarted client while it
finishes an interrupted commit. After every kill the client's disk is audited before a new
process starts on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from faults.kill_campaign import Figures, KillCampaign
from fedunlearn.deletion import DeletionQueue
from fedunlearn.history import HistoryStore

pytestmark = pytest.mark.faults

FIGURES_FILE = os.environ.get("FEDUNLEARN_FAULT_FIGURES")  # optional: where to append the figures as JSON


def _campaign(tmp_path: Path, *, seed: int, kills: int) -> tuple[KillCampaign, Figures]:
    campaign = KillCampaign(tmp_path, seed=seed, kills=kills)
    figures = campaign.run()
    if FIGURES_FILE:
        with open(FIGURES_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": "kill", "seed": seed, **_summary(figures)}) + "\n")
    return campaign, figures


def _summary(figures: Figures) -> dict[str, object]:
    return {k: v for k, v in vars(figures).items() if k != "unexpected_errors"} | {
        "unexpected_errors": len(figures.unexpected_errors)
    }


def _assert_durable(campaign: KillCampaign, figures: Figures, kills: int) -> None:
    # Assert: the kills happened, including at commit points and during recovery
    assert figures.kills >= kills, _summary(figures)
    assert figures.kills_mid_command > 0 and figures.kills_at_commit_point > 0, _summary(figures)
    # Assert: nothing lost, nothing corrupted, no error other than the kills themselves
    assert figures.requests_lost == 0, _summary(figures)
    assert figures.corrupted_stores == 0 and figures.corrupted_request_files == 0, _summary(figures)
    assert figures.receipt_mismatches == 0, _summary(figures)
    assert figures.unexpected_errors == [], figures.unexpected_errors[:5]
    # Assert: eventually every request is served, with the same receipt on both sides
    requests = DeletionQueue(campaign.state_dir).all()
    assert {r.request_id for r in requests} >= campaign.acked and not campaign.unacked and not campaign.awaiting
    assert [r.request_id for r in requests if r.status != "served"] == []
    queue = DeletionQueue(campaign.state_dir)
    for request in requests:
        receipt = queue.receipt(request.request_id)
        ids = queue.committed_ids(request.request_id)
        assert ids is not None and queue.ids_match_receipt(request.request_id, ids)
        assert campaign.server_receipts[request.request_id]["ids_hmac"] == receipt.ids_hmac
        assert "num_samples" not in campaign.server_receipts[request.request_id]  # the server's copy
    # Assert: the forgotten samples are in no stored step (each purged exactly once, never re-trained)
    store = HistoryStore.for_model(
        campaign.state_dir / "history" / "kill-test", model=campaign._model(), config=campaign.config.history
    )
    store.verify()
    forgotten = queue.forgotten_ids()
    assert len(forgotten) > 0 and store.affected_steps(forgotten) == []


def test_client_killed_20_times_loses_no_request_and_corrupts_no_store(tmp_path: Path) -> None:
    # Prepare / Execute
    campaign, figures = _campaign(tmp_path, seed=11, kills=20)

    # Assert
    _assert_durable(campaign, figures, 20)
    assert figures.served >= 5 and figures.rounds >= 10


@pytest.mark.slow
def test_client_killed_60_times_loses_no_request_and_corrupts_no_store(tmp_path: Path) -> None:
    # Prepare / Execute
    campaign, figures = _campaign(tmp_path, seed=2024, kills=60)

    # Assert
    _assert_durable(campaign, figures, 60)
    assert figures.kills_during_recovery > 0
