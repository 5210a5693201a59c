"""Unit tests of the on-disk history: round trip, weights, lookups, purge, accounting, corruption."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.config import HistoryConfig, TrainConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.errors import HistoryCorruptedError, HistoryError
from fedunlearn.history import FILE_OVERHEAD_BYTES, STEP_OVERHEAD_BYTES, HistoryStore
from fedunlearn.training import train_local

TRAIN = TrainConfig(batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-3, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    """Tiny models run faster on one thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data(n: int = 40, seed: int = 0) -> IndexedDataset:
    g = torch.Generator().manual_seed(seed)
    inputs, labels = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    return IndexedDataset(inputs, labels, torch.arange(100, 100 + n), 3)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _record(store: HistoryStore, model: nn.Module, data: IndexedDataset, round_number: int) -> dict[str, torch.Tensor]:
    """Train one recorded round; return the actual parameter change."""
    before = _params(model)
    with store.record_round(round_number) as rec:
        train_local(model, data, config=TRAIN, seed=round_number, observer=rec)
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


def _batches_of(data: IndexedDataset, round_number: int) -> list[set[int]]:
    """The batches train_local draws for ``seed=round_number`` (independent of the store)."""
    g = torch.Generator().manual_seed(round_number)
    return [set(b.sample_ids.tolist()) for b in data.batches(TRAIN.batch_size, shuffle=True, generator=g)]


def _round_file(store: HistoryStore, round_number: int) -> Path:
    row = next(r for r in store.usage().rounds if r.round == round_number)
    return store.directory / row.file


Recorded = tuple[HistoryStore, nn.Module, IndexedDataset, dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]


@pytest.fixture
def recorded(tmp_path: Path) -> Recorded:
    model, data = _model(), _data()
    initial = _params(model)
    store = HistoryStore.for_model(tmp_path / "history", model=model, config=HistoryConfig(keep_ratio=1.0))
    changes = [_record(store, model, data, 1), _record(store, model, data, 2)]
    return store, model, data, initial, changes


def test_round_trip_sum_equals_parameter_change_and_restores_initial(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, data, initial, _ = recorded
    reopened = HistoryStore.for_model(store.directory, model=model, config=HistoryConfig(keep_ratio=1.0))
    # Execute
    total = reopened.sum_deltas(data.ids(), weighted=False)
    # Assert
    assert total.num_steps == 2 * data.num_batches(TRAIN.batch_size)
    assert total.rounds == (1, 2) and total.unmatched_ids.size == 0
    for name, p in model.named_parameters():
        assert torch.allclose(total.delta[name], p.detach() - initial[name], atol=1e-6)
        assert torch.allclose(p.detach() - total.delta[name], initial[name], atol=1e-6)


def test_weighted_sum_uses_round_weights(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, changes = recorded
    store.set_round_weight(1, 0.25)
    store.set_round_weight(2, 0.75)
    # Execute
    total = store.sum_deltas(data.ids())
    # Assert
    for name in changes[0]:
        assert torch.allclose(total.delta[name], 0.25 * changes[0][name] + 0.75 * changes[1][name], atol=1e-6)


def test_sum_limited_to_rounds_is_that_round_and_the_parts_add_up(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, changes = recorded
    store.set_round_weight(1, 0.25)
    store.set_round_weight(2, 0.75)
    # Execute
    first, second = store.sum_deltas(data.ids(), rounds=[1]), store.sum_deltas(data.ids(), rounds={2})
    total = store.sum_deltas(data.ids())
    # Assert: one round's sum is that round's weighted change; the rounds add up to the whole
    assert first.rounds == (1,) and second.rounds == (2,)
    assert first.num_steps + second.num_steps == total.num_steps
    for name in changes[0]:
        assert torch.allclose(first.delta[name], 0.25 * changes[0][name], atol=1e-6)
        assert torch.allclose(first.delta[name] + second.delta[name], total.delta[name], atol=1e-6)


def test_missing_weight_names_the_rounds(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    store.set_round_weight(1, 0.5)
    # Assert
    with pytest.raises(HistoryError, match=r"round\(s\) \[2\]"):
        store.sum_deltas(data.ids())
    with pytest.raises(HistoryError, match="stored rounds: \\[1, 2\\]"):
        store.set_round_weight(7, 0.5)
    with pytest.raises(HistoryError, match="finite number >= 0"):
        store.set_round_weight(1, -1.0)


def test_affected_steps_are_exactly_the_batches_holding_the_ids(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    wanted = {103, 117}
    expected = [(r, i) for r in (1, 2) for i, batch in enumerate(_batches_of(data, r)) if batch & wanted]
    # Execute
    refs = store.affected_steps(np.array(sorted(wanted)))
    # Assert
    assert [(ref.round, ref.step) for ref in refs] == expected
    for ref in refs:
        assert set(ref.sample_ids.tolist()) == _batches_of(data, ref.round)[ref.step]


def test_purge_removes_steps_once(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    everything = store.sum_deltas(data.ids(), weighted=False)
    forgotten = store.sum_deltas([105], weighted=False)
    # Execute
    removed = store.purge([105])
    # Assert
    assert removed == forgotten.num_steps == 2
    assert store.affected_steps([105]) == []
    assert store.purge([105]) == 0
    again = store.sum_deltas([105], weighted=False)
    assert again.num_steps == 0 and again.unmatched_ids.tolist() == [105]
    rest = store.sum_deltas(data.ids(), weighted=False)
    assert rest.num_steps == everything.num_steps - 2
    for name in rest.delta:
        assert torch.allclose(rest.delta[name], everything.delta[name] - forgotten.delta[name], atol=1e-6)
    store.verify()
    reopened = HistoryStore(store.directory, layout=store.layout, config=store.config)
    assert reopened.sum_deltas(data.ids(), weighted=False).num_steps == rest.num_steps


def test_purge_keeps_round_weights_and_purge_all_empties(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    store.set_round_weight(1, 0.4)
    store.purge([100, 101])
    # Execute
    weights = {row.round: row.weight for row in store.usage().rounds}
    steps_left = sum(row.steps for row in store.usage().rounds)
    removed = store.purge_all()
    # Assert
    assert weights == {1: 0.4, 2: None}
    assert removed == steps_left
    assert store.rounds() == [] and list(store.directory.glob("round-*")) == []


def test_unknown_or_empty_ids_give_zero_delta(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, _, _, _ = recorded
    # Execute
    total = store.sum_deltas(np.array([5, 6], dtype=np.int64), weighted=False)
    empty = store.sum_deltas([], weighted=False)
    # Assert
    assert total.num_steps == 0 and total.unmatched_ids.tolist() == [5, 6]
    for name, p in model.named_parameters():
        assert torch.equal(p.detach() + empty.delta[name], p.detach())
    with pytest.raises(HistoryError, match="integers"):
        store.sum_deltas([1.5])


@pytest.mark.parametrize(("value_dtype", "value_bytes"), [("float32", 4), ("float16", 2)])
def test_usage_bytes_match_formula(tmp_path: Path, value_dtype: str, value_bytes: int) -> None:
    # Prepare
    rho, model = 0.1, _model()
    config = HistoryConfig(keep_ratio=rho, value_dtype=value_dtype)  # type: ignore[arg-type]
    store = HistoryStore.for_model(tmp_path, model=model, config=config)
    sizes = {1: _data(40), 2: _data(27, seed=1)}
    # Execute
    for r, data in sizes.items():
        _record(store, model, data, r)
    usage = store.usage()
    # Assert: sum_b sum_l ceil(rho |theta_l|) (index + value bytes) + 8 B per sample id (ALGORITHMS.md)
    per_step = sum(math.ceil(rho * p.numel()) * (4 + value_bytes) for p in model.parameters())
    numel = sum(p.numel() for p in model.parameters())
    for row in usage.rounds:
        data, steps = sizes[row.round], sizes[row.round].num_batches(TRAIN.batch_size)
        formula = steps * per_step + 8 * len(data)
        assert row.steps == steps
        assert row.bytes == formula + steps * STEP_OVERHEAD_BYTES + FILE_OVERHEAD_BYTES
        assert row.bytes == (store.directory / row.file).stat().st_size
        assert row.dense_bytes == steps * numel * 4
    manifest = (store.directory / "manifest.json").stat().st_size
    assert usage.disk_bytes == sum(r.bytes for r in usage.rounds) + manifest
    assert usage.ratio == pytest.approx(usage.disk_bytes / usage.dense_bytes)


def test_keep_ratio_one_stores_values_without_indices(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, data, _, _ = recorded
    numel = sum(p.numel() for p in model.parameters())
    steps = data.num_batches(TRAIN.batch_size)
    # Execute
    row = store.usage().rounds[0]
    # Assert
    assert row.bytes == steps * (numel * 4 + STEP_OVERHEAD_BYTES) + 8 * len(data) + FILE_OVERHEAD_BYTES


def _flip_byte(path: Path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_flipped_byte_in_a_record_is_detected(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    path = _round_file(store, 2)
    _flip_byte(path, 200)
    # Assert
    with pytest.raises(HistoryCorruptedError, match=f"{path.name}.*step 0 has sha256 .*, expected"):
        store.sum_deltas(data.ids(), weighted=False)
    survivor_of_step_0 = sorted(_batches_of(data, 2)[-1])[0]  # purge must copy the damaged step 0
    with pytest.raises(HistoryCorruptedError, match="backup"):
        store.purge([survivor_of_step_0])
    assert store.usage().rounds[1].steps == data.num_batches(TRAIN.batch_size)  # nothing committed
    with pytest.raises(HistoryCorruptedError, match="expected"):
        store.verify()


def test_flipped_byte_in_the_index_or_header_is_detected(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    index_path, header_path = _round_file(store, 1), _round_file(store, 2)
    _flip_byte(index_path, index_path.stat().st_size - 100)
    _flip_byte(header_path, 20)
    # Assert
    with pytest.raises(HistoryCorruptedError, match=f"{index_path.name}.*index has sha256"):
        store.affected_steps([100])
    store.discard_round(1)
    with pytest.raises(HistoryCorruptedError, match=f"{header_path.name}.*header"):
        store.affected_steps([100])


def test_truncated_file_is_detected(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, data, _, _ = recorded
    path = _round_file(store, 1)
    path.write_bytes(path.read_bytes()[:-10])
    # Assert
    with pytest.raises(HistoryCorruptedError, match=f"{path.name}.*bytes, the manifest expects"):
        store.sum_deltas(data.ids(), weighted=False)


def test_damaged_manifest_is_detected(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, _, _, _ = recorded
    path = store.directory / "manifest.json"
    document = json.loads(path.read_text())
    document["rounds"][0]["weight"] = 3.0
    path.write_text(json.dumps(document))
    # Assert: a hand-edited value and an unparsable file are both refused
    with pytest.raises(HistoryCorruptedError, match="checksum"):
        HistoryStore.for_model(store.directory, model=model, config=HistoryConfig(keep_ratio=1.0))
    path.write_text('{"format": "fedunlearn-history", "rou')
    with pytest.raises(HistoryCorruptedError, match="manifest.json is malformed"):
        HistoryStore.for_model(store.directory, model=model, config=HistoryConfig(keep_ratio=1.0))


def test_leftover_temp_and_orphan_files_are_removed_on_open(recorded, caplog) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, data, _, _ = recorded
    (store.directory / "round-000003-deadbeef.bin.tmp").write_bytes(b"half a round")
    (store.directory / "round-000004-deadbeef.bin").write_bytes(b"renamed but never committed")
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedunlearn.history"):
        reopened = HistoryStore.for_model(store.directory, model=model, config=HistoryConfig(keep_ratio=1.0))
    # Assert
    assert sorted(p.name for p in store.directory.iterdir() if "deadbeef" in p.name) == []
    assert "round-000003-deadbeef.bin.tmp" in caplog.text and "round-000004-deadbeef.bin" in caplog.text
    assert reopened.rounds() == [1, 2]
    assert reopened.sum_deltas(data.ids(), weighted=False).num_steps == 2 * data.num_batches(TRAIN.batch_size)


def test_exception_inside_record_round_leaves_no_round(tmp_path: Path) -> None:
    # Prepare
    model, data = _model(), _data()
    store = HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig())
    # Execute
    with pytest.raises(RuntimeError, match="client crashed"):
        with store.record_round(1) as rec:
            train_local(model, data, config=TRAIN, seed=1, observer=rec)
            raise RuntimeError("client crashed")
    # Assert
    assert store.rounds() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert HistoryStore.for_model(tmp_path, model=model, config=HistoryConfig()).rounds() == []


def test_re_recording_a_round_replaces_it(recorded, caplog) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, data, _, _ = recorded
    store.set_round_weight(2, 0.5)
    old = _round_file(store, 2)
    # Execute
    with caplog.at_level(logging.WARNING, logger="fedunlearn.history"):
        change = _record(store, model, _data(16), 2)
    # Assert
    assert "round 2 recorded again" in caplog.text
    assert not old.exists() and store.rounds() == [1, 2]
    row = store.usage().rounds[1]
    assert row.weight is None and row.steps == 2
    total = store.sum_deltas(np.arange(100, 116), weighted=False)
    assert total.rounds == (1, 2)
    only_round_2 = store.sum_deltas(np.arange(100, 116), weighted=False).delta
    assert set(only_round_2) == set(change)


def test_layout_or_settings_mismatch_is_refused(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, _, _, _, _ = recorded
    other = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 3))
    # Assert
    with pytest.raises(HistoryError, match=r"another model \('0.weight' has shape \[9, 4\], expected \[8, 4\]"):
        HistoryStore.for_model(store.directory, model=other, config=HistoryConfig(keep_ratio=1.0))
    with pytest.raises(HistoryError, match="recorded with .*'keep_ratio': 1.0.* but opened with .*'keep_ratio': 0.1"):
        HistoryStore.for_model(store.directory, model=_model(), config=HistoryConfig(keep_ratio=0.1))


def test_missing_manifest_with_round_files_is_refused(recorded) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    store, model, _, _, _ = recorded
    (store.directory / "manifest.json").unlink()
    # Assert
    with pytest.raises(HistoryCorruptedError, match="manifest.json is missing"):
        HistoryStore.for_model(store.directory, model=model, config=HistoryConfig(keep_ratio=1.0))
