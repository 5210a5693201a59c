"""Train one model of a paper figure: fixed batches, every history recorded from one run.

``train_model`` loads nothing itself: it gets the dataset bundle, caps the splits (seeded),
deals the training set into fixed class-stratified batches (``simulations.paper.batches``)
and trains with ``simulations.centralized_training.train_recording``, which feeds the same
steps to every history: the full one (keep ratio 1.0, conventional amnesiac), the pruned
one (``PaperSetup.keep_ratio``, partial amnesiac) and any ``HistoryRecipe`` the caller adds
(another keep ratio or selector, or one record per epoch instead of per step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import DatasetBundle, IndexedDataset
from fedunlearn.history import HistoryStore
from fedunlearn.history.recorder import RoundRecorder
from fedunlearn.training import StepObserver
from fedunlearn.types import SelectorName
from fedunlearn.unlearning.base import ForgetRetainSplit
from simulations.centralized_profiles import Profile
from simulations.centralized_training import Cell, capped, fresh_model, train_recording
from simulations.paper.batches import FixedBatchDataset, Placement, place_deletion, with_plan
from simulations.paper.settings import PaperSetup


@dataclass(frozen=True)
class HistoryRecipe:
    """An extra history: keep ratio, selector, ``per_epoch`` (one record per epoch: the
    epoch's net change, pruned, with every sample id of the epoch, instead of one per step)
    and ``from_epoch`` (epochs before it are not recorded: what amnesiac unlearning can undo
    when the deleted data only took part in the later epochs)."""

    keep_ratio: float
    selector: SelectorName = "topk"
    per_epoch: bool = False
    from_epoch: int = 0


class Skip:
    """A StepObserver that records nothing (an epoch a recipe leaves out)."""

    def before_step(self, model: nn.Module) -> None:
        """Do nothing."""

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        """Do nothing."""


@dataclass
class Trained:
    """A trained model with its histories: ``cell`` (as the shared adapter wants it), the
    fixed-batch training set, ``extras`` (by recipe name), the initial weights, the cost."""

    cell: Cell
    data: FixedBatchDataset
    extras: dict[str, HistoryStore]
    initial: dict[str, torch.Tensor]
    seconds: float

    @property
    def steps(self) -> int:
        """Recorded steps of the full history (epochs x batches)."""
        return sum(r.steps for r in self.cell.histories[1.0].usage().rounds)


class EpochRecorder:
    """A StepObserver that turns a round recorder into one record per ``every`` steps.

    The record is the change over those steps (selected like any step) with the union of
    their sample ids, so "affected" means "the chunk held a deleted sample".
    """

    def __init__(self, recorder: RoundRecorder, every: int) -> None:
        self.recorder, self.every, self.count = recorder, every, 0
        self.ids: list[torch.Tensor] = []

    def before_step(self, model: nn.Module) -> None:
        """Snapshot at the first step of a chunk."""
        if self.count % self.every == 0:
            self.recorder.before_step(model)

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        """Record at the last step of a chunk."""
        self.ids.append(sample_ids)
        self.count += 1
        if self.count % self.every == 0:
            self.recorder.after_step(model, torch.cat(self.ids))
            self.ids = []


def prepare(setup: PaperSetup, bundle: DatasetBundle) -> tuple[FixedBatchDataset, IndexedDataset]:
    """The capped training set on its fixed batch plan, and the capped test set (seeded)."""
    train = capped(bundle.train, setup.train_samples, setup.seed, 1)
    test = capped(bundle.test, setup.test_samples, setup.seed, 2)
    return with_plan(train, batch_size=setup.batch_size, seed=setup.seed, kind=setup.batches), test


def train_model(
    setup: PaperSetup,
    profile: Profile,
    bundle: DatasetBundle,
    name: str,
    *,
    workdir: Path,
    extras: Mapping[str, HistoryRecipe] | None = None,
) -> Trained:
    """Train model ``name`` (seeded) once, recording the profile's histories and ``extras``."""
    data, test = prepare(setup, bundle)
    config = TrainConfig(model=name, batch_size=setup.batch_size, lr=setup.lr, momentum=setup.momentum)
    model = fresh_model(bundle, name, setup.seed)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    recipes = {f"keep-{r:g}": HistoryRecipe(r) for r in profile.history_ratios()} | dict(extras or {})
    stores = {
        key: HistoryStore.for_model(
            workdir / key, model=model, config=HistoryConfig(keep_ratio=r.keep_ratio, selector=r.selector)
        )
        for key, r in recipes.items()
    }
    per_epoch = data.plan.num_batches

    def wrap(key: str, epoch: int, recorder: RoundRecorder) -> StepObserver:
        recipe = recipes[key]
        if epoch < recipe.from_epoch:
            return Skip()
        return EpochRecorder(recorder, per_epoch) if recipe.per_epoch else recorder

    seconds = train_recording(
        model,
        data,
        config=config,
        epochs=setup.epochs,
        seed=setup.seed,
        stores=stores,
        wrap=wrap,
        desc=f"train {bundle.name}/{name}",
    )
    histories = {r: stores[f"keep-{r:g}"] for r in profile.history_ratios()}
    cell = Cell(profile.datasets[0], name, data, test, model, histories, config, bundle)
    named = {k: stores[k] for k in (extras or {})}
    return Trained(cell, data, named, initial, seconds)


def delete(
    trained: Trained, setup: PaperSetup, *, fraction: float | None = None
) -> tuple[Placement, ForgetRetainSplit]:
    """The setup's deletion placed on the trained batches (``fraction`` overrides ``setup.affected``).

    Returns the placement and the forget/retain split it implies. The retained samples get
    their own fixed batch plan, so RT retrains as the original was trained: plain
    reshuffled batches would end each epoch on a remainder batch (5 samples for 51,717
    retained MNIST images), and that single step at the end of training was enough to
    break ResNet9's BatchNorm statistics (RT test accuracy 99.6% at step 3,900 of 4,045,
    24.4% at the end).
    """
    placement = place_deletion(
        trained.data,
        fraction=setup.affected if fraction is None else fraction,
        kind=setup.delete,
        forget_class=setup.forget_class,
        seed=setup.seed,
    )
    retain = with_plan(
        trained.data.without_ids(placement.ids), batch_size=setup.batch_size, seed=setup.seed, kind=setup.batches
    )
    return placement, ForgetRetainSplit(trained.data.subset_by_ids(placement.ids), retain)
