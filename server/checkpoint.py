"""The server's round checkpoint: what a resumed run needs to continue the same model.

Written after every round and after every unlearning phase, under
``<run.state-root>/server/checkpoint/``: the global and initial weights and ``server.json``
(the last completed round, the lineage, each partition's FedAvg weight per round, the
clients that left, and the results so far). ``server.json`` is written last and names the
SHA-256 of the weights it goes with, so a crash between the files is detected, never
mixed. The clients' histories and pending requests live on the clients; with the same
lineage they continue where they were.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

from fedunlearn.atomic import write_bytes_atomic, write_json_atomic
from fedunlearn.errors import FedUnlearnError
from fedunlearn.results import ClientRoundRecord, RoundRecord
from server.state import ServerState

CHECKPOINT_DIR = "checkpoint"
META = "server.json"


def checkpoint_dir(state_root: str | Path) -> Path:
    """Where the server of the run with this state root keeps its checkpoint."""
    return Path(state_root) / "server" / CHECKPOINT_DIR


def _tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def save_checkpoint(state: ServerState, completed_round: int) -> Path:
    """Persist everything a resumed run needs after ``completed_round`` (atomic, meta last)."""
    folder = checkpoint_dir(state.config.run.state_root)
    model, initial = _tensor_bytes(state.arrays.to_torch_state_dict()), _tensor_bytes(state.initial)
    write_bytes_atomic(folder / "model.pt", model)
    write_bytes_atomic(folder / "initial.pt", initial)
    strategy = state.strategy
    meta = {
        "completed_round": completed_round,
        "lineage": state.lineage,
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "initial_sha256": hashlib.sha256(initial).hexdigest(),
        "round_weights": {str(p): {str(r): w for r, w in ws.items()} for p, ws in strategy.round_weights.items()},
        "departed_partitions": sorted(strategy.departed_partitions),
        "results": state.results.to_dict(),
        "written_at": time.time(),
    }
    return write_json_atomic(folder / META, meta)


def has_checkpoint(state_root: str | Path) -> bool:
    """Whether a run with this state root left a checkpoint to resume from."""
    return (checkpoint_dir(state_root) / META).exists()


def restore_checkpoint(state: ServerState) -> int:
    """Load the checkpoint into ``state``; return the last completed round.

    Raises FedUnlearnError when there is none or its files do not match each other.
    """
    folder = checkpoint_dir(state.config.run.state_root)
    if not (folder / META).exists():
        raise FedUnlearnError(
            f"run.resume is set but {folder} holds no checkpoint; start without resume to begin at round 1"
        )
    meta: dict[str, Any] = json.loads((folder / META).read_text(encoding="utf-8"))
    model, initial = (folder / "model.pt").read_bytes(), (folder / "initial.pt").read_bytes()
    if hashlib.sha256(model).hexdigest() != meta["model_sha256"] or (
        hashlib.sha256(initial).hexdigest() != meta["initial_sha256"]
    ):
        raise FedUnlearnError(f"the checkpoint in {folder} is damaged (weights do not match {META}); start over")
    state.arrays = ArrayRecord(torch.load(io.BytesIO(model), weights_only=True))
    state.initial = torch.load(io.BytesIO(initial), weights_only=True)
    state.lineage = state.strategy.lineage = str(meta["lineage"])
    state.strategy.round_weights = {
        int(p): {int(r): float(w) for r, w in ws.items()} for p, ws in meta["round_weights"].items()
    }
    state.strategy.departed_partitions = set(meta["departed_partitions"])
    _restore_results(state, meta["results"])
    state.next_round = int(meta["completed_round"]) + 1
    return int(meta["completed_round"])


def _restore_results(state: ServerState, saved: dict[str, Any]) -> None:
    """Keep the rounds and events of the runs before this one in this run's results."""
    for row in saved.get("rounds", []):
        clients = [ClientRoundRecord(**c) for c in row.get("clients", [])]
        state.results.rounds.append(RoundRecord(**{**row, "clients": clients}))
    state.results.events.extend(saved.get("events", []))
