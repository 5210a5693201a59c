"""Fixed batch plans and deletions placed on exactly p% of the recorded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.errors import ConfigError
from fedunlearn.history import HistoryStore
from fedunlearn.training import train_local
from simulations.paper.batches import class_sorted_plan, place_deletion, stratified_plan, with_plan


def dataset(generator: torch.Generator, n: int = 400, classes: int = 4) -> IndexedDataset:
    labels = torch.arange(n) % classes
    return IndexedDataset(torch.randn(n, 6, generator=generator), labels, torch.arange(1000, 1000 + n), classes)


class IdLog:
    """A StepObserver keeping the sample ids of every step."""

    def __init__(self) -> None:
        self.steps: list[frozenset[int]] = []

    def before_step(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        self.steps.append(frozenset(sample_ids.tolist()))


def test_stratified_plan_covers_every_sample_once_and_puts_every_class_in_every_batch() -> None:
    labels = np.repeat(np.arange(5), 40)  # 200 samples, 5 classes

    plan = stratified_plan(labels, batch_size=20, seed=3)

    positions = np.concatenate(plan.groups)
    assert plan.num_batches == 10 and sorted(positions.tolist()) == list(range(200))
    assert all(len(g) == 20 and set(labels[g]) == set(range(5)) for g in plan.groups)


def test_class_sorted_plan_gives_single_class_batches() -> None:
    labels = np.repeat(np.arange(4), 30)

    plan = class_sorted_plan(labels, batch_size=10, seed=0)

    assert plan.num_batches == 12 and all(len(set(labels[g])) == 1 for g in plan.groups)


def test_training_sees_the_same_batches_every_epoch_in_a_reshuffled_order(generator: torch.Generator) -> None:
    data = with_plan(dataset(generator), batch_size=40, seed=0)
    log = IdLog()
    config = TrainConfig(model="mlp", batch_size=40, lr=0.1)

    for epoch in range(2):
        train_local(nn.Linear(6, 4), data, config=config, seed=epoch, epochs=1, observer=log)

    first, second = log.steps[:10], log.steps[10:]
    planned = {frozenset(data.ids()[g].tolist()) for g in data.plan.groups}
    assert set(first) == set(second) == planned
    assert first != second  # the order of the batches changed


@pytest.mark.parametrize("kind", ["class", "sample"])
def test_deletions_touch_exactly_the_asked_share_of_batches_and_are_nested(
    generator: torch.Generator, kind: str
) -> None:
    data = with_plan(dataset(generator), batch_size=4, seed=1)  # 100 batches
    fractions = (0.01, 0.05, 0.25, 1.0)

    placed = [place_deletion(data, fraction=f, kind=kind, forget_class=2, seed=0) for f in fractions]  # type: ignore[arg-type]

    for fraction, p in zip(fractions, placed, strict=True):
        owner = data.plan.batch_of(len(data))[data.positions_of(p.ids)]
        assert len(set(owner.tolist())) == round(100 * fraction) == len(p.batches)
        assert p.affected_fraction == fraction
    for small, big in zip(placed, placed[1:], strict=False):
        assert set(small.ids) <= set(big.ids)
    if kind == "class":
        assert set(data.subset_by_ids(placed[-1].ids).labels.tolist()) == {2}
        assert len(placed[-1].ids) == int((data.labels == 2).sum())  # 100%: the whole class
    else:
        assert all(len(p.ids) == len(p.batches) for p in placed)  # one sample per batch


def test_a_share_no_plan_can_reach_is_refused_with_the_reason(generator: torch.Generator) -> None:
    sorted_data = with_plan(dataset(generator), batch_size=10, seed=0, kind="class_sorted")

    with pytest.raises(ConfigError, match="only 10 hold a sample of class 1"):
        place_deletion(sorted_data, fraction=0.5, kind="class", forget_class=1, seed=0)
    whole = place_deletion(sorted_data, fraction=None, kind="class", forget_class=1, seed=0)
    assert whole.affected_fraction == 0.25 and len(whole.ids) == 100


def test_recorded_history_has_exactly_epochs_times_chosen_batches_affected(
    generator: torch.Generator, tmp_path: Path
) -> None:
    data = with_plan(dataset(generator, n=200), batch_size=10, seed=0)  # 20 batches
    model = nn.Linear(6, 4)
    store = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig(keep_ratio=0.5))
    placement = place_deletion(data, fraction=0.25, kind="sample", forget_class=0, seed=4)

    for epoch in range(3):
        with store.record_round(epoch) as recorder:
            train_local(model, data, config=TrainConfig(batch_size=10, lr=0.1), seed=epoch, epochs=1, observer=recorder)

    assert len(store.affected_steps(placement.ids)) == 3 * 5


def test_batches_are_dealt_evenly_and_other_batch_sizes_get_ordinary_batches(generator: torch.Generator) -> None:
    data = with_plan(dataset(generator, n=101), batch_size=10, seed=0)  # 101 = 10 x 10 + 1

    planned = [len(b.sample_ids) for b in data.batches(10)]
    other = [len(b.sample_ids) for b in data.batches(25)]

    assert len(planned) == 11 and set(planned) <= {9, 10}  # no 1-sample remainder batch
    assert other == [25, 25, 25, 25, 1] and data.num_batches(25) == 5
