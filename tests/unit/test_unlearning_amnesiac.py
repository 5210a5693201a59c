"""Amnesiac and partial amnesiac: identities against the recorded history."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from fedunlearn.aggregation import add_scaled
from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import UnlearningError
from fedunlearn.history import HistoryStore, RoundRecorder, layer_keep_count
from fedunlearn.training import train_local
from fedunlearn.unlearning import ForgetRetainSplit, UnlearnContext, get_method
from fedunlearn.unlearning.amnesiac import AmnesiacSettings

TRAIN = TrainConfig(model="tiny", local_epochs=1, batch_size=8, lr=0.1, momentum=0.5)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def make_data(n: int = 32) -> IndexedDataset:
    g = torch.Generator().manual_seed(1)
    return IndexedDataset(
        torch.randn(n, 16, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(500, 500 + n), 3
    )


class DenseTee:
    """Forwards to a RoundRecorder and also keeps every dense step with its batch ids."""

    def __init__(self, recorder: RoundRecorder, steps: list[tuple[dict[str, torch.Tensor], set[int]]]) -> None:
        self.recorder, self.steps = recorder, steps
        self.before: dict[str, torch.Tensor] = {}

    def before_step(self, model: nn.Module) -> None:
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.recorder.before_step(model)

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        self.steps.append(
            ({n: p.detach() - self.before[n] for n, p in model.named_parameters()}, set(sample_ids.tolist()))
        )
        self.recorder.after_step(model, sample_ids)


Recorded = tuple[nn.Module, nn.Module, IndexedDataset, HistoryStore, list]


def record(tmp: Path, keep_ratio: float, rounds: int = 2) -> Recorded:
    """Train a fresh tiny model ``rounds`` rounds, recording the history; return (initial, trained, ...)."""
    model, data = tiny_model(), make_data()
    initial = copy.deepcopy(model)
    store = HistoryStore.for_model(tmp, model=model, config=HistoryConfig(keep_ratio=keep_ratio))
    dense: list[tuple[dict[str, torch.Tensor], set[int]]] = []
    for r in range(1, rounds + 1):
        with store.record_round(r) as rec:
            train_local(model, data, config=TRAIN, seed=r, observer=DenseTee(rec, dense))
    return initial, model, data, store, dense


def forget_split(data: IndexedDataset, ids: list[int]) -> ForgetRetainSplit:
    return ForgetRetainSplit(
        forget=data.subset_by_ids(torch.tensor(ids).numpy()), retain=data.without_ids(torch.tensor(ids).numpy())
    )


def unlearn(
    name: str,
    model: nn.Module,
    split: ForgetRetainSplit,
    store: HistoryStore,
    settings: AmnesiacSettings | None = None,
    **context: object,
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_method(name)(
            model,
            split=split,
            settings=settings or AmnesiacSettings(),
            context=UnlearnContext(history=store, **context),
        )


def test_partial_amnesiac_with_keep_ratio_one_equals_amnesiac_exactly(tmp_path: Path) -> None:
    _, model, data, store, _ = record(tmp_path, keep_ratio=1.0)
    split = forget_split(data, [501, 517, 530])

    conventional = get_method("amnesiac")(
        model, split=split, settings=AmnesiacSettings(finetune_epochs=0), context=UnlearnContext(history=store)
    )
    with pytest.warns(UserWarning, match="unpruned"):
        partial = get_method("partial_amnesiac")(
            model, split=split, settings=AmnesiacSettings(), context=UnlearnContext(history=store)
        )

    assert conventional.delta.keys() == partial.delta.keys()
    assert all(torch.equal(conventional.delta[k], partial.delta[k]) for k in conventional.delta)
    assert conventional.cost.history_steps == partial.cost.history_steps > 0


def test_correction_is_minus_the_sum_of_the_affected_steps(tmp_path: Path) -> None:
    _, model, data, store, dense = record(tmp_path, keep_ratio=1.0)
    forgotten = {503, 520}
    affected = [delta for delta, ids in dense if ids & forgotten]

    correction = unlearn("amnesiac", model, forget_split(data, sorted(forgotten)), store)

    assert correction.cost.history_steps == len(affected) >= 2
    for name, _ in model.named_parameters():
        expected = -torch.stack([d[name] for d in affected]).sum(dim=0)
        torch.testing.assert_close(correction.delta[name], expected, rtol=0, atol=1e-6)


def test_subtracting_every_delta_of_a_one_client_run_restores_the_initial_weights(tmp_path: Path) -> None:
    initial, model, data, store, _ = record(tmp_path, keep_ratio=1.0)
    everything = forget_split(data, data.sample_ids.tolist())

    correction = unlearn("amnesiac", model, everything, store)

    restored = add_scaled(model.state_dict(), correction.delta)
    assert correction.cost.history_steps == 8
    for name, value in initial.state_dict().items():
        torch.testing.assert_close(restored[name], value, rtol=0, atol=1e-5)
        assert not torch.allclose(model.state_dict()[name], value, atol=1e-3)


def test_weighted_history_scales_each_round_by_its_weight(tmp_path: Path) -> None:
    _, model, data, store, _ = record(tmp_path, keep_ratio=1.0, rounds=1)
    store.set_round_weight(1, 0.25)
    split = forget_split(data, [510])

    unit = unlearn("amnesiac", model, split, store)
    weighted = unlearn("amnesiac", model, split, store, history_weighted=True)

    for name in unit.delta:
        torch.testing.assert_close(weighted.delta[name], 0.25 * unit.delta[name], rtol=1e-6, atol=1e-8)


def test_partial_amnesiac_subtracts_only_the_kept_entries(tmp_path: Path) -> None:
    _, model, data, store, _ = record(tmp_path, keep_ratio=0.25)
    split = forget_split(data, [505])

    correction = unlearn("partial_amnesiac", model, split, store)

    steps = correction.cost.history_steps
    assert steps == 2  # one batch per round holds sample 505
    for name, param in model.named_parameters():
        nonzero = int((correction.delta[name] != 0).sum())
        assert 0 < nonzero <= steps * layer_keep_count(param.numel(), 0.25)


def test_each_method_warns_when_the_history_suggests_the_other(tmp_path: Path) -> None:
    _, model, data, store, _ = record(tmp_path, keep_ratio=0.5, rounds=1)

    with pytest.warns(UserWarning, match="partial amnesiac"):
        get_method("amnesiac")(
            model, split=forget_split(data, [500]), settings=AmnesiacSettings(), context=UnlearnContext(history=store)
        )


def test_forget_set_overlapping_nothing_in_the_history_is_an_error(tmp_path: Path) -> None:
    _, model, data, store, _ = record(tmp_path, keep_ratio=1.0, rounds=1)
    store.purge([500])  # sample 500's steps are gone, so it overlaps nothing any more

    with pytest.raises(UnlearningError, match="none of the 1 forgotten sample id"):
        unlearn("partial_amnesiac", model, forget_split(data, [500]), store)


def test_missing_history_is_an_error() -> None:
    model, data = tiny_model(), make_data()

    with pytest.raises(UnlearningError, match="needs the client's update history"):
        get_method("amnesiac")(
            model, split=forget_split(data, [500]), settings=AmnesiacSettings(), context=UnlearnContext()
        )


def test_amnesiac_fine_tunes_on_retained_data_when_asked(tmp_path: Path) -> None:
    _, model, data, store, _ = record(tmp_path, keep_ratio=1.0, rounds=1)
    split = forget_split(data, [500, 501])

    plain = unlearn("amnesiac", model, split, store)
    tuned = unlearn(
        "amnesiac", model, split, store, settings=AmnesiacSettings(finetune_epochs=2, batch_size=8, lr=0.05)
    )

    assert tuned.cost.forward_backward == 2 * 4  # 30 retained samples, batches of 8
    assert plain.cost.forward_backward == 0
    assert any(not torch.allclose(tuned.delta[k], plain.delta[k]) for k in plain.delta)
