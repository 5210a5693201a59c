"""Dataset loaders through the real loading code, on files written in the official formats.

MNIST IDX files and MedMNIST npz files are written into a temporary folder (``tests/helpers``)
and read by ``fedunlearn.data.load_dataset`` -> torchvision / medmnist. One test reads the real
MNIST in ``$FEDUNLEARN_DATA``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import medmnist  # noqa: F401  (imported at collection: its ~3 s import is not any test's cost)
import numpy as np
import pytest
import torch
import torchvision.datasets  # noqa: F401  (likewise ~3 s, used by the MNIST loader)
from helpers.datafiles import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, idx_bytes, write_medmnist_npz, write_mnist_raw

from fedunlearn.config import DataConfig
from fedunlearn.data import DATA_ENV_VAR, build_federated_data, load_dataset, resolve_data_root
from fedunlearn.data.sources import MNIST_FILES, _load_cached, available_datasets
from fedunlearn.errors import ConfigError, DataNotFoundError, UnknownNameError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MEDMNIST_MEAN, MEDMNIST_STD = 0.5, 0.5


@pytest.fixture(autouse=True)
def _fresh_loader_cache() -> Iterator[None]:
    """``load_dataset`` caches per process; every test starts (and ends) with an empty cache."""
    _load_cached.cache_clear()
    yield
    _load_cached.cache_clear()


def _expected(raw: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """Hand-computed normalization of uint8 (N, H, W[, C]) images to float (N, C, H, W)."""
    x = torch.from_numpy(raw.astype(np.float32) / 255.0)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return (x - mean) / std


# ----------------------------------------------------------------------------- IDX writer


def test_idx_writer_uses_official_magic_numbers_and_big_endian_dims() -> None:
    # Prepare
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    labels = np.array([1, 2, 3], dtype=np.uint8)

    # Execute
    image_bytes, label_bytes = idx_bytes(images), idx_bytes(labels)

    # Assert
    assert int.from_bytes(image_bytes[0:4], "big") == IDX_IMAGES_MAGIC == 2051
    assert [int.from_bytes(image_bytes[i : i + 4], "big") for i in (4, 8, 12)] == [3, 28, 28]
    assert int.from_bytes(label_bytes[0:4], "big") == IDX_LABELS_MAGIC == 2049
    assert int.from_bytes(label_bytes[4:8], "big") == 3
    assert label_bytes[8:] == bytes([1, 2, 3])


# ---------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_mnist_loads_written_idx_files_with_shapes_normalization_labels_and_ids(tmp_path: Path, compress: bool) -> None:
    # Prepare
    written = write_mnist_raw(tmp_path, n_train=12, n_test=5, compress=compress)

    # Execute
    bundle = load_dataset("mnist", root=tmp_path)

    # Assert
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28) and bundle.in_channels == 1
    for split, ds in (("train", bundle.train), ("test", bundle.test)):
        raw = written[split]
        assert ds.inputs.shape == (len(raw.labels), 1, 28, 28)
        assert ds.inputs.dtype == torch.float32
        torch.testing.assert_close(ds.inputs, _expected(raw.images, MNIST_MEAN, MNIST_STD))
        assert ds.labels.dtype == torch.int64
        assert ds.labels.tolist() == raw.labels.tolist()
        assert ds.sample_ids.dtype == torch.int64
        assert ds.sample_ids.tolist() == list(range(len(raw.labels)))
    # image 0 is black, image 1 white: the two ends of the standardized range
    assert torch.allclose(bundle.train.inputs[0], torch.full((1, 28, 28), -MNIST_MEAN / MNIST_STD))
    assert torch.allclose(bundle.train.inputs[1], torch.full((1, 28, 28), (1 - MNIST_MEAN) / MNIST_STD))


def test_mnist_gunzips_only_compressed_files_and_leaves_no_partial_files(tmp_path: Path) -> None:
    # Prepare
    write_mnist_raw(tmp_path, compress=True)
    raw = tmp_path / "MNIST" / "raw"
    assert not any((raw / name).exists() for name in MNIST_FILES)

    # Execute
    load_dataset("mnist", root=tmp_path)

    # Assert
    for name in MNIST_FILES:
        plain = (raw / name).read_bytes()
        with gzip.open(raw / f"{name}.gz", "rb") as handle:
            assert plain == handle.read()
    assert list(raw.glob("*.part")) == []


def test_mnist_prefers_existing_plain_file_over_gz(tmp_path: Path) -> None:
    # Prepare: plain files from seed 0, a .gz of different content next to one of them
    written = write_mnist_raw(tmp_path, seed=0)
    raw = tmp_path / "MNIST" / "raw"
    other = write_mnist_raw(tmp_path / "other", seed=1)
    with gzip.open(raw / "train-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(idx_bytes(other["train"].labels))

    # Execute
    bundle = load_dataset("mnist", root=tmp_path)

    # Assert
    assert bundle.train.labels.tolist() == written["train"].labels.tolist()


def test_mnist_corrupt_gz_raises_data_not_found_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    # Prepare: a valid .gz for every file, then one cut off mid-stream
    write_mnist_raw(tmp_path, compress=True)
    raw = tmp_path / "MNIST" / "raw"
    packed = raw / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:200])

    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("mnist", root=tmp_path)

    # Assert
    assert str(packed) in str(caught.value)
    assert not (raw / "train-images-idx3-ubyte").exists()
    assert list(raw.glob("*.part")) == []


def test_mnist_truncated_idx_file_raises_data_not_found_naming_folder(tmp_path: Path) -> None:
    # Prepare
    write_mnist_raw(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    images = raw / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])

    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("mnist", root=tmp_path)

    # Assert
    assert str(raw) in str(caught.value)


def test_mnist_file_that_is_not_idx_raises_data_not_found_naming_folder(tmp_path: Path) -> None:
    # Prepare: a saved error page where a label file should be (a failed manual download)
    write_mnist_raw(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").write_bytes(b"<html>404 Not Found</html>")

    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("mnist", root=tmp_path)

    # Assert
    assert str(raw) in str(caught.value) and "corrupt" in str(caught.value)


def test_mnist_missing_files_error_lists_them_with_folder_and_remedy(tmp_path: Path) -> None:
    # Prepare: only the training files exist
    write_mnist_raw(tmp_path, splits=("train",))
    raw = tmp_path / "MNIST" / "raw"

    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("mnist", root=tmp_path)

    # Assert
    message = str(caught.value)
    assert str(raw) in message
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert DATA_ENV_VAR in message and "download" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_mnist_in_empty_folder_lists_all_four_files(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("mnist", root=tmp_path)

    # Assert
    assert all(name in str(caught.value) for name in MNIST_FILES)


def test_real_mnist_from_shared_data_has_official_sizes_and_ids(data_root: Path) -> None:
    # Execute
    bundle = load_dataset("mnist", root=data_root)

    # Assert
    assert bundle.train.inputs.shape == (60000, 1, 28, 28)
    assert bundle.test.inputs.shape == (10000, 1, 28, 28)
    assert torch.equal(bundle.train.sample_ids, torch.arange(60000))
    assert torch.equal(bundle.test.sample_ids, torch.arange(10000))
    assert sorted(bundle.train.labels.unique().tolist()) == list(range(10))
    # standardized with MNIST's own statistics: mean ~0, std ~1 over the training set
    assert abs(float(bundle.train.inputs.mean())) < 0.01
    assert abs(float(bundle.train.inputs.std()) - 1.0) < 0.01


# ------------------------------------------------------------------------------- MedMNIST


def test_organamnist_loads_written_npz_with_shapes_normalization_labels_and_ids(tmp_path: Path) -> None:
    # Prepare
    arrays = write_medmnist_npz(tmp_path, "organamnist", num_classes=11, n_train=12, n_val=4, n_test=6)

    # Execute
    bundle = load_dataset("organamnist", root=tmp_path)

    # Assert
    assert bundle.name == "organamnist"
    assert bundle.num_classes == 11 and bundle.input_shape == (1, 28, 28)
    for split, ds in (("train", bundle.train), ("test", bundle.test)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        assert ds.inputs.shape == (len(images), 1, 28, 28)
        torch.testing.assert_close(ds.inputs, _expected(images, MEDMNIST_MEAN, MEDMNIST_STD))
        assert ds.labels.dtype == torch.int64
        assert ds.labels.tolist() == labels[:, 0].tolist()
        assert ds.sample_ids.tolist() == list(range(len(images)))
        assert ds.num_classes == 11
    assert float(bundle.train.inputs[0].min()) == -1.0 and float(bundle.train.inputs[1].max()) == 1.0


def test_medmnist_rgb_flag_loads_channels_first(tmp_path: Path) -> None:
    # Prepare
    arrays = write_medmnist_npz(tmp_path, "pathmnist", num_classes=9, rgb=True, label_dtype=np.int64)

    # Execute
    bundle = load_dataset("pathmnist", root=tmp_path)

    # Assert
    assert bundle.input_shape == (3, 28, 28) and bundle.in_channels == 3 and bundle.num_classes == 9
    assert bundle.train.inputs.shape == (len(arrays["train_images"]), 3, 28, 28)
    torch.testing.assert_close(bundle.train.inputs, _expected(arrays["train_images"], MEDMNIST_MEAN, MEDMNIST_STD))
    # channel c of sample 2 is the c-th last-axis plane of the written image
    raw = arrays["train_images"][2]
    for c in range(3):
        expected = (torch.from_numpy(raw[:, :, c].astype(np.float32)) / 255.0 - 0.5) / 0.5
        torch.testing.assert_close(bundle.train.inputs[2, c], expected)


def test_medmnist_missing_file_error_names_expected_path_and_how_to_get_it(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("organamnist", root=tmp_path)

    # Assert
    message = str(caught.value)
    assert str(tmp_path / "organamnist.npz") in message
    assert "zenodo" in message.lower() and DATA_ENV_VAR in message and "download" in message


def test_medmnist_npz_without_a_split_raises_data_not_found(tmp_path: Path) -> None:
    # Prepare: an npz lacking the test arrays
    arrays = write_medmnist_npz(tmp_path, "organamnist", num_classes=11)
    np.savez(tmp_path / "organamnist.npz", **{k: v for k, v in arrays.items() if not k.startswith("test")})

    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("organamnist", root=tmp_path)

    # Assert
    assert str(tmp_path / "organamnist.npz") in str(caught.value)


@pytest.mark.parametrize("content", [b"<html>404</html>", b"PK\x03\x04truncated"], ids=["html", "bad-zip"])
def test_medmnist_corrupt_npz_raises_data_not_found(tmp_path: Path, content: bytes) -> None:
    # Prepare
    (tmp_path / "organamnist.npz").write_bytes(content)

    # Execute
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("organamnist", root=tmp_path)

    # Assert
    assert str(tmp_path / "organamnist.npz") in str(caught.value)


def test_load_dataset_name_is_case_insensitive(tmp_path: Path) -> None:
    # Prepare
    write_medmnist_npz(tmp_path, "organamnist", num_classes=11)

    # Execute
    bundle = load_dataset("OrganAMNIST", root=tmp_path)

    # Assert
    assert bundle.name == "organamnist"


def test_load_dataset_caches_until_cleared(tmp_path: Path) -> None:
    # Prepare
    write_medmnist_npz(tmp_path, "organamnist", num_classes=11, seed=0)
    first = load_dataset("organamnist", root=tmp_path)
    write_medmnist_npz(tmp_path, "organamnist", num_classes=11, seed=1)

    # Execute
    cached = load_dataset("organamnist", root=tmp_path)
    _load_cached.cache_clear()
    reloaded = load_dataset("organamnist", root=tmp_path)

    # Assert
    assert cached is first
    assert not torch.equal(reloaded.train.inputs, first.train.inputs)


# ------------------------------------------------------------------------- names and roots


def test_unknown_dataset_name_lists_known_names(tmp_path: Path) -> None:
    # Execute
    with pytest.raises(UnknownNameError) as caught:
        load_dataset("cifar10", root=tmp_path)

    # Assert
    message = str(caught.value)
    assert "'cifar10'" in message
    for known in ("mnist", "organamnist", "pathmnist", "digits"):
        assert known in message
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, KeyError)
    assert "organmnist3d" not in available_datasets()  # 3D sets are not served


def test_resolve_data_root_prefers_argument_then_env_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))

    # Execute
    explicit = resolve_data_root(tmp_path / "explicit")
    empty = resolve_data_root("")
    from_env = resolve_data_root(None)
    monkeypatch.delenv(DATA_ENV_VAR)
    default = resolve_data_root(None)

    # Assert
    assert explicit == (tmp_path / "explicit").resolve()
    assert empty == from_env == (tmp_path / "env").resolve()
    assert default == Path.home() / ".fedunlearn" / "data"


def test_load_dataset_without_root_reads_env_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    written = write_mnist_raw(tmp_path, n_train=7)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))

    # Execute
    bundle = load_dataset("mnist")

    # Assert
    assert bundle.train.labels.tolist() == written["train"].labels.tolist()


# ------------------------------------------------------------------------ federated data


def test_build_federated_data_gives_each_client_its_partition_and_caps_test(tmp_path: Path) -> None:
    # Prepare
    written = write_mnist_raw(tmp_path, n_train=30, n_test=10)
    config = DataConfig(dataset="mnist", root=str(tmp_path), num_clients=3, test_samples=4)

    # Execute
    data = build_federated_data(config, seed=5)
    again = build_federated_data(config, seed=5)

    # Assert
    shares = [data.client_train(k) for k in range(3)]
    assert sorted(torch.cat([s.sample_ids for s in shares]).tolist()) == list(range(30))
    for k, share in enumerate(shares):
        assert share.sample_ids.tolist() == data.partition.for_client(k).tolist()
        assert share.labels.tolist() == written["train"].labels[share.ids()].tolist()
    assert len(data.test) == 4 and data.num_classes == 10
    assert set(data.test.sample_ids.tolist()) <= set(range(10))
    assert data.test.sample_ids.tolist() == sorted(data.test.sample_ids.tolist())
    assert torch.equal(data.test.sample_ids, again.test.sample_ids)
    with pytest.raises(ConfigError):
        data.client_train(3)


def test_build_federated_data_keeps_whole_test_set_when_cap_exceeds_it(tmp_path: Path) -> None:
    # Prepare
    write_mnist_raw(tmp_path, n_train=10, n_test=5)

    # Execute
    data = build_federated_data(DataConfig(root=str(tmp_path), num_clients=2, test_samples=50), seed=0)

    # Assert
    assert data.test.sample_ids.tolist() == list(range(5))
