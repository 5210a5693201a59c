"""FedEraser (Liu et al. 2021): the server's update log, update calibration and reconstruction.

Liu, Ma, Yang, Wang, Liu, "FedEraser: Enabling Efficient Client-Level Data Removal from
Federated Learning Models", IWQoS 2021. Pure PyTorch (no Flower): ``server.federaser`` feeds
the log from its round hook and runs the calibration exchanges.

During training the server keeps, every ``Δt`` rounds (retained rounds ``t_1 = 1``,
``t_{j+1} = t_j + Δt``), each participating client's update ``U_k^{t_j} = w_k^{t_j} - M^{t_j}``
(its new weights minus the global model the round started from) and that global model. To
forget client ``k_u`` it rebuilds the model from the initial one, ``M~^{t_1} = M^{t_1}``:

1. calibration training: each remaining client trains from ``M~^{t_j}`` for ``E_cali = r E_loc``
   (calibration ratio ``r``), giving ``U^^{t_j}_k``;
2. update calibrating: ``U~_k = ||U_k|| * U^_k / ||U^_k||`` — the stored update gives the step
   length, the fresh one the direction (paper, "Update calibrating"; official code
   ``unlearning_step_once``: ``step_length * step_direction``);
3. aggregation: ``U~ = sum_k w_k U~_k / sum_k w_k`` with the FedAvg weights ``w_k = N_k / sum N``
   of the remaining clients;
4. ``M~^{t_{j+1}} = M~^{t_j} + U~``.

The first retained round starts from the initial model, which holds nothing of ``k_u``, so
its stored updates are applied without calibration (paper: "FedEraser can directly update
the global model without calibration ... at the first reconstruction epoch"; code: epoch 0).

Our choices, where the paper and the official code differ:

- calibration is per client as in the paper (the code calibrates the plain *mean* of the
  client updates once), and norms are taken per state-dict entry ("layer") as in the code
  (``torch.norm(old_param_update[layer])``), not over the whole vector;
- the stored update is ``w_k^{t_j} - M^{t_j}`` (the round's *starting* global model) as the
  paper defines it; the code subtracts ``selected_GMs[epoch+1]``, the model *after* the round;
- the aggregation weights are renormalised over the remaining clients that answered the
  calibration (the paper's extra ``1/(K-1)`` factor would shrink every step and is not in
  the code, which takes a plain mean);
- ``E_cali`` is counted in local steps: ``ceil(r * E_loc * ceil(N_k / B))`` (the code rounds
  epochs, ``ceil(r * E_loc)``, which is no reduction at all for ``E_loc = 1``);
- defaults ``Δt = 1`` (the code's ``unlearn_interval``) and ``r = 0.5`` (paper and code);
  the paper's experiments use ``Δt = 2``;
- a layer whose fresh update is exactly zero gets no step (the formula's 0/0);
- entries that are not floating point (e.g. BatchNorm counters) keep the initial model's value.

On-disk log (one writer)::

    <root>/round-000003/global.pt         M^{t_j}, torch tensors
    <root>/round-000003/client-0002.pt    U_2^{t_j}
    <root>/round-000003/manifest.json     files, sha256, bytes, num-examples (written last)

Tensor files are written atomically before the manifest, so a round without a manifest was
never completed and is ignored; every load checks the file's SHA-256 against the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedunlearn.aggregation import add_scaled, fedavg_weights, weighted_sum
from fedunlearn.atomic import write_bytes_atomic, write_json_atomic
from fedunlearn.errors import HistoryCorruptedError, UnlearningError
from fedunlearn.types import Delta, StateDict, TensorMap

logger = logging.getLogger(__name__)

#: Δt: the server keeps rounds 1, 1 + Δt, 1 + 2Δt, ... (official code's default ``unlearn_interval``).
RETAIN_INTERVAL = 1
#: r = E_cali / E_loc (paper and official code: 0.5).
CALIBRATION_RATIO = 0.5
MANIFEST = "manifest.json"
ROUND_PREFIX = "round-"


def is_retained_round(server_round: int, *, interval: int = RETAIN_INTERVAL) -> bool:
    """Whether round ``server_round`` (1-based) is one the server keeps: ``t_j = 1 + (j-1) Δt``.

    >>> [r for r in range(1, 8) if is_retained_round(r, interval=3)]
    [1, 4, 7]
    """
    if interval < 1:
        raise ValueError(f"the retaining interval must be >= 1, got {interval}")
    return server_round >= 1 and (server_round - 1) % interval == 0


def client_update(client_state: TensorMap, global_state: TensorMap) -> Delta:
    """``U_k = w_k - M`` over the floating-point entries of ``global_state`` (float32)."""
    return {
        k: client_state[k].detach().float().cpu() - v.detach().float().cpu()
        for k, v in global_state.items()
        if v.is_floating_point()
    }


def calibrate(stored: TensorMap, fresh: TensorMap, *, per_layer: bool = True) -> Delta:
    """``U~ = ||U|| * U^ / ||U^||``: the stored update's length along the fresh update's direction.

    ``per_layer``: norms per entry (official code); else over all entries together. Where the
    fresh update is zero the result is zero. Keys must agree.

    >>> calibrate({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.0, 2.0])})["w"].tolist()
    [0.0, 5.0]
    """
    if set(stored) != set(fresh):
        only_stored, only_fresh = sorted(set(stored) - set(fresh)), sorted(set(fresh) - set(stored))
        raise UnlearningError(
            f"calibration needs the same entries in both updates; only in the stored one: "
            f"{only_stored[:5]}, only in the fresh one: {only_fresh[:5]}"
        )
    if per_layer:
        return {k: _rescale(fresh[k].float(), _norm([stored[k]]), _norm([fresh[k]])) for k in stored}
    length, fresh_norm = _norm(stored.values()), _norm(fresh.values())
    return {k: _rescale(fresh[k].float(), length, fresh_norm) for k in stored}


def _norm(tensors: Iterable[torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.sum(t.detach().double() ** 2)) for t in tensors))


def _rescale(direction: torch.Tensor, length: float, norm: float) -> torch.Tensor:
    if norm == 0.0:
        return torch.zeros_like(direction)
    return direction * (length / norm)


def aggregate_updates(updates: Sequence[TensorMap], num_examples: Sequence[float]) -> Delta:
    """``sum_k w_k U_k`` with ``w_k = N_k / sum_j N_j`` over the given clients only."""
    return weighted_sum(list(updates), fedavg_weights(list(num_examples)))


def calibration_steps(
    *, num_examples: int, batch_size: int, local_epochs: int, ratio: float = CALIBRATION_RATIO
) -> int:
    """``E_cali`` in local steps: ``ceil(ratio * local_epochs * ceil(N_k / B))``, at least 1.

    >>> calibration_steps(num_examples=1000, batch_size=64, local_epochs=1)
    8
    """
    if num_examples < 0 or batch_size < 1 or local_epochs < 1 or not 0 < ratio <= 1:
        raise ValueError(
            f"need num_examples >= 0, batch_size >= 1, local_epochs >= 1 and ratio in (0, 1]; got "
            f"{num_examples}, {batch_size}, {local_epochs}, {ratio}"
        )
    return max(1, math.ceil(ratio * local_epochs * math.ceil(num_examples / batch_size)))


# ----------------------------------------------------------------------------- update log
@dataclass(frozen=True)
class LoggedFile:
    """One stored tensor file: name inside its round folder, SHA-256, size."""

    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class LoggedRound:
    """One retained round: the global model it started from and each client's update."""

    round: int
    global_file: LoggedFile
    clients: dict[int, LoggedFile] = field(default_factory=dict)  # partition id -> U_k
    num_examples: dict[int, int] = field(default_factory=dict)  # partition id -> N_k

    @property
    def bytes(self) -> int:
        """Bytes of the round's tensor files."""
        return self.global_file.bytes + sum(f.bytes for f in self.clients.values())

    def to_json(self) -> dict[str, object]:
        """Return the manifest's content."""
        return {
            "round": self.round,
            "global": vars(self.global_file),
            "clients": [
                {"partition_id": p, "num_examples": self.num_examples[p], **vars(f)}
                for p, f in sorted(self.clients.items())
            ],
        }

    @staticmethod
    def from_json(data: Mapping[str, object]) -> LoggedRound:
        """Parse a manifest (KeyError/TypeError/ValueError on malformed content)."""
        clients = list(data["clients"])  # type: ignore[call-overload]
        return LoggedRound(
            round=int(data["round"]),  # type: ignore[call-overload]
            global_file=LoggedFile(**data["global"]),  # type: ignore[arg-type]
            clients={int(c["partition_id"]): LoggedFile(c["name"], c["sha256"], int(c["bytes"])) for c in clients},
            num_examples={int(c["partition_id"]): int(c["num_examples"]) for c in clients},
        )


def _tensor_bytes(tensors: TensorMap) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buffer)
    return buffer.getvalue()


class UpdateLog:
    """FedEraser's server-side store of retained rounds under ``root`` (see the module docstring).

    >>> import tempfile
    >>> log = UpdateLog(tempfile.mkdtemp())
    >>> entry = log.write_round(1, global_state={"w": torch.zeros(2)}, updates=[(0, 10, {"w": torch.ones(2)})])
    >>> [r.round for r in log.rounds()], log.load_update(entry, 0)["w"].tolist()
    ([1], [1.0, 1.0])
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _folder(self, server_round: int) -> Path:
        return self.root / f"{ROUND_PREFIX}{server_round:06d}"

    def write_round(
        self, server_round: int, *, global_state: TensorMap, updates: Iterable[tuple[int, int, TensorMap]]
    ) -> LoggedRound:
        """Store ``M^r`` and each ``(partition_id, num_examples, U_k^r)``, then the manifest.

        One file at a time (the updates are streamed from ``updates``); the manifest is the
        commit point. Replaces an earlier record of the same round.
        """
        folder = self._folder(server_round)
        if folder.exists():
            shutil.rmtree(folder)
        global_file = self._write(folder, "global.pt", global_state)
        clients: dict[int, LoggedFile] = {}
        counts: dict[int, int] = {}
        for partition_id, num_examples, update in updates:
            if partition_id in clients:
                raise ValueError(f"round {server_round}: partition id {partition_id} given twice")
            clients[partition_id] = self._write(folder, f"client-{partition_id:04d}.pt", update)
            counts[partition_id] = int(num_examples)
        entry = LoggedRound(server_round, global_file, clients, counts)
        write_json_atomic(folder / MANIFEST, entry.to_json())
        return entry

    @staticmethod
    def _write(folder: Path, name: str, tensors: TensorMap) -> LoggedFile:
        data = _tensor_bytes(tensors)
        write_bytes_atomic(folder / name, data)
        return LoggedFile(name, hashlib.sha256(data).hexdigest(), len(data))

    def rounds(self) -> list[LoggedRound]:
        """Completed rounds, oldest first (folders without a manifest are skipped, with a log line)."""
        if not self.root.is_dir():
            return []
        entries = []
        for folder in sorted(self.root.glob(f"{ROUND_PREFIX}*")):
            manifest = folder / MANIFEST
            if not manifest.exists():
                logger.warning("FedEraser log: %s has no manifest (an interrupted write); ignored", folder)
                continue
            try:
                entries.append(LoggedRound.from_json(json.loads(manifest.read_text(encoding="utf-8"))))
            except (ValueError, KeyError, TypeError) as err:
                raise HistoryCorruptedError(
                    f"FedEraser log manifest {manifest} is unreadable ({err}); the log cannot "
                    f"reconstruct the model: delete {self.root} (FedEraser then has "
                    "nothing to reconstruct from)"
                ) from err
        return sorted(entries, key=lambda e: e.round)

    def _load(self, server_round: int, entry: LoggedFile) -> StateDict:
        path = self._folder(server_round) / entry.name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise HistoryCorruptedError(f"FedEraser log file {path} cannot be read: {err}") from err
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise HistoryCorruptedError(
                f"FedEraser log file {path} has SHA-256 {digest[:12]}..., the manifest "
                f"expects {entry.sha256[:12]}...; the file was changed or truncated"
            )
        loaded: StateDict = torch.load(io.BytesIO(data), weights_only=True)
        return loaded

    def load_global(self, entry: LoggedRound) -> StateDict:
        """``M^{t_j}``, checksum-verified."""
        return self._load(entry.round, entry.global_file)

    def load_update(self, entry: LoggedRound, partition_id: int) -> Delta:
        """``U_k^{t_j}`` of one client, checksum-verified."""
        if partition_id not in entry.clients:
            raise KeyError(
                f"round {entry.round} holds no update of client {partition_id}; it has {sorted(entry.clients)}"
            )
        return self._load(entry.round, entry.clients[partition_id])

    def remove_client(self, partition_id: int) -> int:
        """Drop every stored update of one client (after it left); return the bytes freed."""
        freed = 0
        for entry in self.rounds():
            if partition_id not in entry.clients:
                continue
            gone = entry.clients[partition_id]
            kept = LoggedRound(
                entry.round,
                entry.global_file,
                {p: f for p, f in entry.clients.items() if p != partition_id},
                {p: n for p, n in entry.num_examples.items() if p != partition_id},
            )
            write_json_atomic(self._folder(entry.round) / MANIFEST, kept.to_json())
            (self._folder(entry.round) / gone.name).unlink(missing_ok=True)
            freed += gone.bytes
        return freed

    def disk_bytes(self) -> int:
        """Bytes of all files under the log (tensor files and manifests)."""
        if not self.root.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def clear(self) -> None:
        """Delete the whole log."""
        if self.root.exists():
            shutil.rmtree(self.root)


# ----------------------------------------------------------------------------- reconstruction
#: ``calibrate_round(round, M~, partition_ids) -> {partition_id: (U^_k)}``: the fresh updates of
#: the remaining clients that answered (the server's calibration exchange).
CalibrationFn = Callable[[int, StateDict, list[int]], dict[int, Delta]]


@dataclass
class Reconstruction:
    """The rebuilt model and what it took."""

    state: StateDict
    rounds: list[int] = field(default_factory=list)  # retained rounds applied
    calibrated: list[int] = field(default_factory=list)  # of which calibrated (not the first)
    clients: dict[int, list[int]] = field(default_factory=dict)  # round -> partition ids aggregated


def reconstruct(
    log: UpdateLog, *, excluded: set[int], calibrate_round: CalibrationFn, per_layer: bool = True
) -> Reconstruction:
    """Rebuild the global model without the clients in ``excluded`` (FedEraser steps 1-4).

    Starts from the first retained round's global model. For each retained round: the
    remaining participants (stored clients minus ``excluded``); round 1's stored updates as
    they are, later rounds' calibrated with ``calibrate_round``'s fresh updates; their
    FedAvg (weights renormalised over the clients used) is added. Rounds without remaining
    participants are skipped. Raises UnlearningError if the log is empty or a round's
    calibration returns nobody, HistoryCorruptedError on a damaged file.
    """
    entries = log.rounds()
    if not entries:
        raise UnlearningError(f"FedEraser has no retained rounds under {log.root}: nothing to reconstruct from")
    theta = log.load_global(entries[0])
    result = Reconstruction(theta)
    for entry in entries:
        remaining = sorted(p for p in entry.clients if p not in excluded)
        if not remaining:
            logger.info("FedEraser: round %d has no remaining participant; skipped", entry.round)
            continue
        if entry.round == 1:
            updates = {p: log.load_update(entry, p) for p in remaining}
        else:
            fresh = calibrate_round(entry.round, theta, remaining)
            unknown = sorted(set(fresh) - set(remaining))
            if not fresh or unknown:
                raise UnlearningError(
                    f"FedEraser round {entry.round}: calibration returned clients {sorted(fresh)}, "
                    f"expected a non-empty subset of {remaining}"
                )
            updates = {p: calibrate(log.load_update(entry, p), fresh[p], per_layer=per_layer) for p in sorted(fresh)}
            result.calibrated.append(entry.round)
        step = aggregate_updates(list(updates.values()), [entry.num_examples[p] for p in updates])
        theta = add_scaled(theta, step)
        result.rounds.append(entry.round)
        result.clients[entry.round] = sorted(updates)
    result.state = theta
    return result
