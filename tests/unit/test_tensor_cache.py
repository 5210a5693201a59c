"""The decoded-dataset cache: reused when the files are unchanged, never served stale."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers.datafiles import write_mnist_raw

from fedunlearn.data import load_dataset, tensor_cache
from fedunlearn.data.sources import _load_cached


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(tensor_cache.CACHE_ENV_VAR, str(folder))
    _load_cached.cache_clear()
    yield folder
    _load_cached.cache_clear()


def test_second_load_reads_the_cache_and_matches(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "data"
    write_mnist_raw(root, n_train=20, n_test=10, seed=0)
    first = load_dataset("mnist", root=root)
    files = list(cache.glob("mnist-*.pt"))
    assert len(files) == 1
    _load_cached.cache_clear()

    second = load_dataset("mnist", root=root)

    assert torch.equal(first.train.inputs, second.train.inputs)
    assert torch.equal(first.test.labels, second.test.labels)
    assert torch.equal(first.train.sample_ids, second.train.sample_ids)


def test_changed_source_file_is_not_served_from_the_cache(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "data"
    write_mnist_raw(root, n_train=20, n_test=10, seed=0)
    load_dataset("mnist", root=root)
    _load_cached.cache_clear()

    write_mnist_raw(root, n_train=30, n_test=10, seed=1)  # new content, new size
    reloaded = load_dataset("mnist", root=root)

    assert len(reloaded.train) == 30
    assert len(list(cache.glob("mnist-*.pt"))) == 2


def test_cache_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tensor_cache.CACHE_ENV_VAR, "off")
    assert tensor_cache.cache_dir() is None
    assert tensor_cache.cache_path("mnist", tmp_path, [tmp_path]) is None


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "data"
    write_mnist_raw(root, n_train=20, n_test=10, seed=0)
    load_dataset("mnist", root=root)
    (path,) = cache.glob("mnist-*.pt")
    path.write_bytes(b"torn")
    _load_cached.cache_clear()

    again = load_dataset("mnist", root=root)

    assert len(again.train) == 20
    assert os.path.getsize(path) > 100  # rewritten
