"""Unit tests of the step recorder: what one step stores, misuse, buffers, fp16, doc examples."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.errors import HistoryError
from fedunlearn.history import HistoryStore, ParamLayout, layout, mask_layerwise, pruning, recorder, store
from fedunlearn.training import train_local


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _manual_step(rec: recorder.RoundRecorder, model: nn.Module, delta: dict[str, torch.Tensor], ids: list[int]) -> None:
    rec.before_step(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(delta[name])
    rec.after_step(model, torch.tensor(ids))


def _random_delta(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()}


@pytest.mark.parametrize("selector", ["topk", "random"])
def test_one_step_stores_the_layerwise_selection_of_the_change(tmp_path: Path, selector: str) -> None:
    # Prepare
    model = _model()
    config = HistoryConfig(keep_ratio=0.3, selector=selector)  # type: ignore[arg-type]
    history = HistoryStore.for_model(tmp_path, model=model, config=config)
    delta = _random_delta(model, seed=1)
    # Execute
    with history.record_round(1, generator=torch.Generator().manual_seed(9)) as rec:
        _manual_step(rec, model, delta, [3, 4])
    stored = history.sum_deltas([4], weighted=False).delta
    # Assert
    expected = mask_layerwise(delta, keep_ratio=0.3, selector=selector, generator=torch.Generator().manual_seed(9))
    for name in delta:
        assert torch.allclose(stored[name], expected[name], atol=1e-6)
        assert int((stored[name] != 0).sum()) == pruning.layer_keep_count(delta[name].numel(), 0.3)


def test_steps_include_momentum_and_weight_decay(tmp_path: Path) -> None:
    # Prepare: with momentum the step differs from -lr * grad; the recorder must see the real one
    model = _model()
    g = torch.Generator().manual_seed(0)
    data = IndexedDataset(torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g), torch.arange(24), 3)
    config = TrainConfig(batch_size=6, lr=0.2, momentum=0.9, weight_decay=0.01, device="cpu")
    history = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig(keep_ratio=1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Execute
    with history.record_round(1) as rec:
        train_local(model, data, config=config, seed=0, observer=rec)
    total = history.sum_deltas(np.arange(24), weighted=False)
    # Assert
    assert rec.steps == total.num_steps == 4
    for name, p in model.named_parameters():
        assert torch.allclose(before[name] + total.delta[name], p.detach(), atol=1e-6)


def test_buffers_are_not_recorded(tmp_path: Path) -> None:
    # Prepare
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    # Execute
    history = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig(keep_ratio=1.0))
    with history.record_round(0) as rec:
        _manual_step(rec, model, _random_delta(model, 2), [1])
        model(torch.randn(3, 4))  # moves the BatchNorm running statistics
    # Assert
    names = set(history.sum_deltas([1], weighted=False).delta)
    assert names == {n for n, _ in model.named_parameters()}
    assert not any("running" in n or "num_batches" in n for n in names)


def test_buffers_are_reused_between_steps(tmp_path: Path) -> None:
    # Prepare
    model = _model()
    history = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig(keep_ratio=0.5))
    # Execute
    with history.record_round(1) as rec:
        _manual_step(rec, model, _random_delta(model, 1), [1])
        first = [layer.snapshot.data_ptr() for layer in rec._layers]
        _manual_step(rec, model, _random_delta(model, 2), [2])
        second = [layer.snapshot.data_ptr() for layer in rec._layers]
    # Assert
    assert first == second and len(first) == 4
    assert history.affected_steps([1, 2])[1].step == 1


def test_misuse_outside_with_or_without_before_step(tmp_path: Path) -> None:
    # Prepare
    model = _model()
    history = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig())
    rec = history.record_round(1)
    # Assert
    with pytest.raises(HistoryError, match="outside"):
        rec.before_step(model)
    with pytest.raises(HistoryError, match="must follow before_step"):
        with history.record_round(2) as rec2:
            rec2.after_step(model, torch.tensor([1]))
    assert history.rounds() == []
    with rec:
        pass
    with pytest.raises(HistoryError, match="already used"):
        with rec:
            pass
    assert history.rounds() == [1]


def test_model_with_another_layout_is_refused(tmp_path: Path) -> None:
    # Prepare
    history = HistoryStore(tmp_path, layout=ParamLayout.from_model(_model()), config=HistoryConfig())
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # Assert
    with pytest.raises(HistoryError, match="'2.weight' has shape \\[2, 8\\], expected \\[3, 8\\]"):
        with history.record_round(1) as rec:
            rec.before_step(other)
    assert history.rounds() == []


def test_float16_overflow_aborts_the_round(tmp_path: Path) -> None:
    # Prepare
    model = _model()
    history = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig(value_dtype="float16"))
    huge = {name: torch.full(p.shape, 1e6) for name, p in model.named_parameters()}
    # Assert
    with pytest.raises(HistoryError, match="value_dtype='float32'"):
        with history.record_round(1) as rec:
            _manual_step(rec, model, huge, [1])
    assert history.rounds() == [] and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_float16_values_round_trip_within_half_precision(tmp_path: Path) -> None:
    # Prepare
    model = _model()
    history = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig(keep_ratio=1.0, value_dtype="float16"))
    delta = {n: d * 1e-2 for n, d in _random_delta(model, 5).items()}
    # Execute
    with history.record_round(1) as rec:
        _manual_step(rec, model, delta, [1])
    stored = history.sum_deltas([1], weighted=False).delta
    # Assert
    for name in delta:
        assert torch.allclose(stored[name], delta[name], rtol=1e-3, atol=1e-6)
        assert stored[name].dtype == torch.float32


@pytest.mark.parametrize("module", [pruning, layout, recorder, store])
def test_docstring_examples_run(module: object) -> None:
    # Execute
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    # Assert
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("keep_ratio", [0.3, 1.0])
def test_torch_path_stores_the_same_as_numpy_path(tmp_path: Path, monkeypatch, keep_ratio: float) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the torch path serves GPU and non-float32 parameters; force it on CPU for comparison
    delta = _random_delta(_model(), seed=4)

    def record(directory: Path) -> tuple[set[str], dict[str, torch.Tensor]]:
        model = _model()
        history = HistoryStore.for_model(directory, model=model, config=HistoryConfig(keep_ratio=keep_ratio))
        with history.record_round(1) as rec:
            _manual_step(rec, model, delta, [1, 2])
            kinds = {type(layer).__name__ for layer in rec._layers}
        return kinds, history.sum_deltas([1], weighted=False).delta

    # Execute
    fast_kinds, fast = record(tmp_path / "numpy")
    monkeypatch.setattr(recorder, "_layer", lambda *args, **kwargs: recorder._TorchLayer(*args))
    slow_kinds, slow = record(tmp_path / "torch")
    # Assert
    assert fast_kinds == {"_NumpyLayer"} and slow_kinds == {"_TorchLayer"}
    assert all(torch.equal(fast[name], slow[name]) for name in delta)
