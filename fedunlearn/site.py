"""A client's local world: its data share, its state directory, its history and requests.

Everything here stays on the client. The Flower ClientApp only decodes messages, calls a
``ClientSite`` method and encodes the reply; the same class serves simulations, deployed
SuperNodes and the ``fedunlearn forget`` CLI (which works on the state directory alone).

State directory layout::

    site.json                  dataset, partition id, number of samples (for the CLI)
    sample_ids.npy             the ids this client holds (validates deletion requests)
    sample_labels.npy          their labels, aligned with sample_ids.npy (validates class requests)
    requests/<id>.json         durable deletion requests (+ <id>.forgotten.npy when served)
    receipts/<id>.json         deletion receipts
    history/<lineage>/         the pruned update history of one model lineage (one trained model,
                               across resumed runs; the server names it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedunlearn.atomic import save_npy_atomic, write_json_atomic
from fedunlearn.config import FederationConfig
from fedunlearn.data import IndexedDataset, build_federated_data
from fedunlearn.data.backdoor import TriggerPattern, poison, select_poison_ids
from fedunlearn.data.corruption import mislabel, select_mislabel_ids
from fedunlearn.deletion import DeletionQueue
from fedunlearn.history import HistoryStore, StorageUsage
from fedunlearn.metrics import EvalResult, evaluate_loss_accuracy
from fedunlearn.models import build_model
from fedunlearn.training import FanOut, TrainResult, train_local
from fedunlearn.types import SampleIds, StateDict

logger = logging.getLogger(__name__)

SITE_FILE = "site.json"
SAMPLE_IDS_FILE = "sample_ids.npy"
SAMPLE_LABELS_FILE = "sample_labels.npy"


def round_seed(seed: int, partition_id: int, server_round: int) -> int:
    """The local-training seed of one client in one round (RT reuses exactly these)."""
    return (seed * 1_000_003 + partition_id * 10_007 + server_round) % (2**63 - 1)


@dataclass(frozen=True)
class RoundOutcome:
    """What a client's local round produced: new weights, training stats, history size."""

    state: StateDict
    train: TrainResult
    usage: StorageUsage
    round_bytes: int


class ClientSite:
    """One client: data share, deletion queue and update history under ``state_dir``."""

    def __init__(
        self,
        *,
        config: FederationConfig,
        partition_id: int,
        state_dir: str | Path,
        lineage: str,
        dataset: IndexedDataset,
        test: IndexedDataset,
        input_shape: tuple[int, ...],
    ) -> None:
        self.config, self.partition_id = config, partition_id
        self.state_dir = Path(state_dir)
        self.lineage = lineage
        self.dataset, self.test, self.input_shape = dataset, test, input_shape
        #: Ids of records an experiment corrupted on this client (``experiment.corrupt-*``).
        self.corrupted: SampleIds = np.empty(0, np.int64)
        self.queue = DeletionQueue(self.state_dir)
        self._write_site_files()

    @classmethod
    def open(
        cls,
        *,
        config: FederationConfig,
        partition_id: int,
        state_dir: str | Path,
        lineage: str,
        num_partitions: int | None = None,
    ) -> ClientSite:
        """Load this client's share of the configured dataset (same partition on every client).

        ``num_partitions`` is the node's own count (Flower's ``node_config``); it defaults to
        ``data.num_clients`` (simulations, the experimenter's view).
        """
        if num_partitions is not None and num_partitions != config.data.num_clients:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_clients=num_partitions))
        data = build_federated_data(config.data, seed=config.seed)
        clean = data.client_train(partition_id)
        site = cls(
            config=config,
            partition_id=partition_id,
            state_dir=state_dir,
            lineage=lineage,
            dataset=corrupt(config, partition_id, clean),
            test=data.test,
            input_shape=data.bundle.input_shape,
        )
        if config.experiment.corrupt_client == partition_id:
            site.corrupted = corrupted_ids(config, clean)
        return site

    # ------------------------------------------------------------------------ files
    def _write_site_files(self) -> None:
        """Record which ids (and labels) this client holds, for the node CLI.

        ``fedunlearn forget`` validates sample- and class-level requests offline against them.
        ``sample_labels.npy`` is aligned with ``sample_ids.npy``; ``site.json`` is written
        last and carries per-class counts, so a complete ``site.json`` means complete files.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        labels = self.dataset.labels.numpy().astype(np.int64)
        values, counts = np.unique(labels, return_counts=True)
        info = {
            "dataset": self.config.data.dataset,
            "partition_id": self.partition_id,
            "num_samples": len(self.dataset),
            "num_classes": self.dataset.num_classes,
            "class_counts": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        }
        site_path, labels_path = self.state_dir / SITE_FILE, self.state_dir / SAMPLE_LABELS_FILE
        stale = not site_path.exists() or not labels_path.exists()
        if stale or json.loads(site_path.read_text(encoding="utf-8")) != info:
            save_npy_atomic(self.state_dir / SAMPLE_IDS_FILE, self.dataset.ids())
            save_npy_atomic(labels_path, labels)
            write_json_atomic(site_path, info)

    @property
    def history_dir(self) -> Path:
        """Where this lineage's pruned history lives."""
        return self.state_dir / "history" / self.lineage

    @property
    def full_history_dir(self) -> Path:
        """The dense companion history (``record_full``), used by conventional amnesiac."""
        return self.state_dir / "history" / f"{self.lineage}-full"

    # ------------------------------------------------------------------------ model & data
    def build_model(self, state: StateDict | None = None) -> nn.Module:
        """The federation's architecture, optionally loaded with ``state``."""
        model = build_model(self.config.train.model, input_shape=self.input_shape, num_classes=self.dataset.num_classes)
        if state is not None:
            model.load_state_dict(state)
        return model

    def history(self, model: nn.Module, *, full: bool = False) -> HistoryStore:
        """This lineage's history store (created on first use); ``full``: the dense companion."""
        if full:
            return HistoryStore.for_model(
                self.full_history_dir, model=model, config=dataclasses.replace(self.config.history, keep_ratio=1.0)
            )
        return HistoryStore.for_model(self.history_dir, model=model, config=self.config.history)

    def history_stores(self, model: nn.Module) -> list[HistoryStore]:
        """Every history this client keeps (the pruned one, and the dense one if recorded)."""
        stores = [self.history(model)] if self.history_dir.exists() else []
        return stores + ([self.history(model, full=True)] if self.full_history_dir.exists() else [])

    def forgotten_ids(self) -> SampleIds:
        """Ids of served deletion requests: never trained on again."""
        return self.queue.forgotten_ids()

    def retained(self) -> IndexedDataset:
        """This client's training data minus everything forgotten so far."""
        excluded = self.forgotten_ids()
        return self.dataset.without_ids(excluded) if len(excluded) else self.dataset

    def holdout(self, *, max_samples: int = 2000) -> IndexedDataset:
        """Data this site holds but never trained on (a seeded sample of its test split): what
        "treated like data the model never saw" is measured against, on the site."""
        if len(self.test) <= max_samples:
            return self.test
        rng = np.random.default_rng([self.config.seed, self.partition_id, 4099])
        return self.test.select(np.sort(rng.choice(len(self.test), max_samples, replace=False)))

    # ------------------------------------------------------------------------ FedAvg round
    def train_round(self, state: StateDict, *, server_round: int, record_full: bool = False) -> RoundOutcome:
        """Train locally from the global ``state`` on retained data, recording the history.

        The round's history is committed before the reply leaves, so a crash never leaves
        an update in the global model that the history does not know about.
        """
        model = self.build_model(state)
        data = self.retained()
        seed = round_seed(self.config.seed, self.partition_id, server_round)
        if not self.config.history.enabled:
            result = train_local(model, data, config=self.config.train, seed=seed)
            return RoundOutcome(model.state_dict(), result, StorageUsage(0, 0, 0, ()), 0)
        store = self.history(model)
        full = self.history(model, full=True) if record_full or self.config.history.record_full else None
        with contextlib.ExitStack() as stack:
            recorder = stack.enter_context(
                store.record_round(server_round, generator=torch.Generator().manual_seed(seed))
            )
            observer = (
                recorder if full is None else FanOut(recorder, stack.enter_context(full.record_round(server_round)))
            )
            result = train_local(model, data, config=self.config.train, seed=seed, observer=observer)
        round_bytes = next((r.bytes for r in store.usage().rounds if r.round == server_round), 0)
        budget = self.config.history.budget_mb
        if budget is not None:
            for kept in (s for s in (store, full) if s is not None):
                enforce_budget(kept, max_bytes=int(budget * 1_000_000))
        return RoundOutcome(model.state_dict(), result, store.usage(), round_bytes)

    def record_round_weights(self, rounds: list[int], weights: list[float]) -> None:
        """Store the FedAvg weights the server reports (idempotent; unknown rounds ignored)."""
        if not self.config.history.enabled or not rounds or not self.history_dir.exists():
            return
        for store in self.history_stores(self.build_model()):
            stored = {row.round: row.weight for row in store.usage().rounds}
            for r, w in zip(rounds, weights, strict=True):
                if r in stored and stored[r] != w:
                    store.set_round_weight(r, w)

    def evaluate(self, state: StateDict) -> EvalResult:
        """Loss and accuracy of ``state`` on this client's retained training data."""
        return evaluate_loss_accuracy(self.build_model(state), self.retained())


def corrupt(config: FederationConfig, partition_id: int, dataset: IndexedDataset) -> IndexedDataset:
    """The client's records as an experiment corrupted them (``experiment.corrupt-*``), else as is."""
    experiment = config.experiment
    if experiment.corrupt_client != partition_id:
        return dataset
    if experiment.corrupt_kind == "mislabel":
        return mislabel(dataset, fraction=experiment.corrupt_fraction, seed=config.seed)
    return poison(
        dataset,
        fraction=experiment.corrupt_fraction,
        target_label=experiment.trigger_target,
        pattern=TriggerPattern(size=experiment.trigger_size),
        seed=config.seed,
    )


def corrupted_ids(config: FederationConfig, clean: IndexedDataset) -> SampleIds:
    """The ids ``corrupt`` changes in ``clean`` (the same seeded draw)."""
    experiment = config.experiment
    if experiment.corrupt_kind == "mislabel":
        return select_mislabel_ids(clean, fraction=experiment.corrupt_fraction, seed=config.seed)
    return select_poison_ids(
        clean, fraction=experiment.corrupt_fraction, target_label=experiment.trigger_target, seed=config.seed
    )


EVICTED_FILE = "evicted.json"


def evicted_rounds(history_dir: Path) -> set[int]:
    """Rounds a history's storage budget dropped on purpose (``history.budget-mb``)."""
    path = history_dir / EVICTED_FILE
    return set(json.loads(path.read_text(encoding="utf-8"))) if path.exists() else set()


def enforce_budget(store: HistoryStore, *, max_bytes: int) -> list[int]:
    """Drop the oldest rounds until the history fits ``max_bytes`` (the newest round always
    stays); the dropped rounds are listed in ``evicted.json`` first, so a crash in between
    never leaves a round missing without a record. Returns the rounds dropped.

    The choice, documented in README: at the budget, the oldest rounds go. A later request
    whose samples were trained in them is unlearned from the rounds that remain; the verified
    phase strengthens that correction until the client's criterion holds, or the request
    stays open with the reason.
    """
    usage = store.usage()
    over, dropped = usage.disk_bytes - max_bytes, []
    for row in usage.rounds[:-1]:
        if over <= 0:
            break
        dropped.append(row.round)
        over -= row.bytes
    if dropped:
        write_json_atomic(store.directory / EVICTED_FILE, sorted(evicted_rounds(store.directory) | set(dropped)))
        for r in dropped:
            store.discard_round(r)
        logger.info("history budget: dropped round(s) %s of %s", dropped, store.directory)
    return dropped
