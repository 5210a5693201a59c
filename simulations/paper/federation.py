"""A paper figure's model trained by a real Flower federation, and its deletion served by one client.

``train_federation`` runs the project's engine (the production ClientApp on Flower's
simulation engine, ``simulations.driver``) twice: the federation with every record (the
trunk), and RT, the same federation retrained from the same seeded weights without the
deleted records. Five clients hold the training set IID, except that every sample of the
forgotten class is on client 1, which then deletes it: the class-only-client cell of
``fedunlearn bench``, at the figure's sizes. One local epoch per round, so ``epochs`` rounds
see every sample as often as the centralized figure's ``epochs`` epochs.

The ``Federation`` it returns is what the forgetting client has on its own disk after
training (its data, its layer-wise pruned and its dense update history, each step stored
with its FedAvg round weight) and the global model the server holds. ``correction`` is the
change that client computes in the fast exchange of a phase (the same method code, its
history weighted as in ``fedunlearn.site_unlearning.fast_correction``), with the settings
the caller gives (the figures pass the centralized figure's, so both run the same
methods); the server's fast step adds it to the global model. ``history_sum`` is a history
method's correction limited to some rounds: a curve subtracts the history round by round.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.config import unflatten_dict
from torch import nn

from fedunlearn.config import FederationConfig
from fedunlearn.data import resolve_data_root
from fedunlearn.history import HistoryStore
from fedunlearn.run_config import config_from_sections
from fedunlearn.site import ClientSite
from fedunlearn.site_unlearning import forget_split
from fedunlearn.types import Delta
from fedunlearn.unlearning import Correction, UnlearnContext, get_method
from fedunlearn.unlearning.base import ForgetRetainSplit
from simulations.comparison import RT, TRUNK, Comparison, plan_runs
from simulations.driver import run_simulation_of
from simulations.judge import GroundTruth, ground_truth, scheduled_ids
from simulations.paper.settings import PaperSetup

#: Clients of a federated figure, and the one that holds (and deletes) the forgotten class.
NUM_CLIENTS = 5
FORGETTING_CLIENT = 1


def federation_flat(setup: PaperSetup, model: str, *, data_root: str | None) -> dict[str, Any]:
    """The flat run config of the figure's federation (see the module docstring)."""
    per_client = None if setup.train_samples is None else setup.train_samples // NUM_CLIENTS
    flat: dict[str, Any] = {
        "data.dataset": setup.dataset,
        "data.root": str(resolve_data_root(data_root)),
        "data.num-clients": NUM_CLIENTS,
        "data.exclusive-class": setup.forget_class,
        "data.exclusive-client": FORGETTING_CLIENT,
        "train.model": model,
        "train.rounds": setup.epochs,
        "train.local-epochs": 1,
        "train.batch-size": setup.batch_size,
        "train.lr": setup.lr,
        "train.momentum": setup.momentum,
        "train.threads": 1,
        "history.keep-ratio": setup.keep_ratio,
        "history.record-full": True,
        "run.seed": setup.seed,
        "experiment.deletion-schedule": f"{setup.epochs}:{FORGETTING_CLIENT}:class:{setup.forget_class}",
    }
    if per_client is not None:
        flat["data.samples-per-client"] = per_client
    if setup.test_samples is not None:
        flat["data.test-samples"] = setup.test_samples
    return flat


@dataclass
class Federation:
    """The trained federation as the forgetting client and the server see it, and RT."""

    site: ClientSite
    split: ForgetRetainSplit  # the client's deleted records and what it keeps
    truth: GroundTruth  # D_f, every client's retained records, the test set
    model: nn.Module  # the global model after the last round
    rt: nn.Module  # the federation retrained without D_f
    rounds: list[int]  # the rounds the client's history holds
    seed: int

    @property
    def recorded_steps(self) -> int:
        """The client's recorded local steps (its dense history)."""
        store = self.history("amnesiac")
        return 0 if store is None else sum(r.steps for r in store.usage().rounds)

    def history(self, method: str) -> HistoryStore | None:
        """The history ``method`` reads on this client (None: it reads none)."""
        kind = get_method(method).traits.history
        if kind not in ("pruned", "dense"):
            return None
        dense = kind == "dense"
        config = dataclasses.replace(self.site.config.history, keep_ratio=1.0) if dense else self.site.config.history
        directory = self.site.full_history_dir if dense else self.site.history_dir
        return HistoryStore.open_existing(directory, model=self.model, config=config)

    def correction(self, method: str, settings: Any) -> Correction:
        """The client's fast change for ``method`` (with ``settings``) from the global model."""
        context = UnlearnContext(
            history=self.history(method),
            history_weighted=True,
            train_config=self.site.config.train,
            seed=self.seed,
            model_factory=self.site.build_model,
        )
        return get_method(method)(self.model, split=self.split, settings=settings, context=context)

    def history_sum(self, method: str, rounds: Collection[int]) -> tuple[int, Delta]:
        """(stored steps, correction) of a history method limited to ``rounds``: minus the
        FedAvg-weighted sum of the client's stored steps that held a deleted record."""
        store = self.history(method)
        if store is None:
            raise ValueError(f"{method} reads no update history")
        total = store.sum_deltas(self.split.forget.ids(), weighted=True, rounds=rounds)
        return total.num_steps, {k: -v for k, v in total.delta.items()}


def train_federation(setup: PaperSetup, model: str, *, workdir: Path, data_root: str | None) -> Federation:
    """Train the figure's federation and its RT with Flower (see the module docstring)."""
    config = config_from_sections(unflatten_dict(federation_flat(setup, model, data_root=data_root)))
    config = dataclasses.replace(
        config, run=dataclasses.replace(config.run, out_dir=str(workdir), state_root=str(workdir / "state"))
    )
    comparison = Comparison(config, labels=(), out=workdir)
    errors: dict[str, BaseException] = {}

    def done(name: str, error: BaseException | None) -> None:
        if error is not None:
            errors[name] = error

    run_simulation_of(plan_runs(comparison), num_clients=NUM_CLIENTS, cpus=os.cpu_count() or 1, on_done=done)
    if errors:
        name, error = next(iter(errors.items()))
        raise RuntimeError(f"the federated {name} run of {model} failed: {error}") from error
    trunk = comparison.run_dir(TRUNK)
    state_root = trunk / "state"
    site = _trained_site(config, state_root)
    entry = comparison.entries[0]
    split = forget_split(site, np.asarray(scheduled_ids(site, entry)))
    truth = ground_truth(config, state_root=state_root)
    history = HistoryStore.open_existing(site.history_dir, model=site.build_model(), config=site.config.history)
    return Federation(
        site=site,
        split=split,
        truth=truth,
        model=_load(site, trunk / "model.pt"),
        rt=_load(site, comparison.run_dir(RT) / "model.pt"),
        rounds=history.rounds(),
        seed=setup.seed,
    )


def _trained_site(config: FederationConfig, state_root: Path) -> ClientSite:
    """The forgetting client's site, opened on the lineage (history folder) it trained in."""
    folder = state_root / f"client-{FORGETTING_CLIENT}"
    lineages = sorted(p.name for p in (folder / "history").glob("*") if p.is_dir() and not p.name.endswith("-full"))
    if len(lineages) != 1:
        raise RuntimeError(f"expected one trained history under {folder / 'history'}, found {lineages}")
    return ClientSite.open(
        config=config, partition_id=FORGETTING_CLIENT, state_dir=folder, lineage=lineages[0], num_partitions=NUM_CLIENTS
    )


def _load(site: ClientSite, path: Path) -> nn.Module:
    return site.build_model(torch.load(path, weights_only=True)).eval()
