"""Dataset loaders by name, through the official torchvision and medmnist classes.

Every loader returns the train and test splits as IndexedDatasets whose sample ids are the
positions in the official split, so ids are stable across machines and runs. On a machine
without network, missing files raise DataNotFoundError naming the file and the folder.
"""

from __future__ import annotations

import functools
import gzip
import logging
import shutil
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedunlearn.data import tensor_cache
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.data.roots import DATA_ENV_VAR, resolve_data_root
from fedunlearn.errors import DataNotFoundError, UnknownNameError

logger = logging.getLogger(__name__)

IMAGE_SIZE = 28


@dataclass(frozen=True)
class DatasetBundle:
    """The train and test splits of one dataset and what a model needs to know about it."""

    name: str
    train: IndexedDataset
    test: IndexedDataset
    num_classes: int
    input_shape: tuple[int, ...]

    @property
    def in_channels(self) -> int:
        """Image channels (1 for tabular data, which models treat as a flat vector)."""
        return self.input_shape[0] if len(self.input_shape) == 3 else 1


Loader = Callable[[Path, bool], DatasetBundle]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a loader ``(root, download) -> DatasetBundle`` under ``name``."""

    def decorator(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return decorator


def available_datasets() -> list[str]:
    """Registered names, plus every 2D multi-class MedMNIST flag."""
    return sorted(set(_LOADERS) | set(_medmnist_2d_flags()))


def load_dataset(name: str, *, root: str | Path | None = None, download: bool = False) -> DatasetBundle:
    """Load ``name`` from ``root`` (see ``resolve_data_root``); cached per process.

    >>> load_dataset("digits").num_classes
    10
    """
    check_dataset_name(name)
    return _load_cached(name.lower(), resolve_data_root(root), download)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Path, download: bool) -> DatasetBundle:
    """Per process: memory; per machine: the decoded-tensor cache (see tensor_cache.py)."""
    path = tensor_cache.cache_path(name, root, _source_files(name, root))
    payload = tensor_cache.read(path) if path is not None else None
    if payload is not None:
        num_classes = int(payload["num_classes"])  # type: ignore[call-overload]
        shape: tuple[int, ...] = tuple(payload["input_shape"])  # type: ignore[arg-type]
        return DatasetBundle(
            name,
            tensor_cache.split_from(payload, "train", num_classes),
            tensor_cache.split_from(payload, "test", num_classes),
            num_classes,
            shape,
        )
    loader = _LOADERS.get(name)
    bundle = _load_medmnist(name, root, download) if loader is None else loader(root, download)
    path = tensor_cache.cache_path(name, root, _source_files(name, root))  # files may exist only now
    if path is not None:
        tensor_cache.write(
            path,
            {
                "num_classes": bundle.num_classes,
                "input_shape": list(bundle.input_shape),
                **tensor_cache.split_payload("train", bundle.train),
                **tensor_cache.split_payload("test", bundle.test),
            },
        )
    return bundle


def _source_files(name: str, root: Path) -> list[Path]:
    """The files a dataset is decoded from (none for sets bundled with packages: not cached)."""
    if name == "mnist":
        return [root / "MNIST" / "raw" / f for f in MNIST_FILES]
    if name in _LOADERS:
        return []
    return [root / f"{name}.npz"]


def _normalized_images(images: np.ndarray | torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W), standardized."""
    x = torch.as_tensor(np.asarray(images))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2)
    return ((x.float() / 255.0) - mean) / std


def _indexed(inputs: torch.Tensor, labels: np.ndarray | torch.Tensor, num_classes: int) -> IndexedDataset:
    y = torch.as_tensor(np.asarray(labels)).reshape(-1).to(torch.int64)
    return IndexedDataset(inputs.contiguous(), y, torch.arange(len(y), dtype=torch.int64), num_classes)


# ------------------------------------------------------------------------------------ MNIST

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@register_dataset("mnist")
def load_mnist(root: Path, download: bool) -> DatasetBundle:
    """MNIST via ``torchvision.datasets.MNIST`` (files in ``<root>/MNIST/raw``)."""
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    _gunzip_missing(raw, MNIST_FILES)
    missing = [f for f in MNIST_FILES if not (raw / f).exists()]
    if missing and not download:
        raise DataNotFoundError(
            f"MNIST files missing in {raw}: {', '.join(missing)}. Put the four official IDX files "
            f"(optionally .gz) there, point --data-root / ${DATA_ENV_VAR} at a folder that has "
            "MNIST/raw, or allow downloading (download=True / --download)."
        )
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError, AssertionError, ValueError, TypeError) as err:
        # torchvision's IDX parser asserts on a bad header (e.g. an HTML page saved as the file).
        raise DataNotFoundError(
            f"could not load or download MNIST into {raw}: {err!r}. The files there may be corrupt; "
            "replace them with the official IDX files."
        ) from err
    mean, std = 0.1307, 0.3081
    return DatasetBundle(
        "mnist",
        _indexed(_normalized_images(train.data, mean, std), train.targets, 10),
        _indexed(_normalized_images(test.data, mean, std), test.targets, 10),
        10,
        (1, IMAGE_SIZE, IMAGE_SIZE),
    )


def _gunzip_missing(raw: Path, names: tuple[str, ...]) -> None:
    """Unpack ``<name>.gz`` where only the compressed IDX file is present (as after a download)."""
    for name in names:
        packed, plain = raw / f"{name}.gz", raw / name
        if packed.exists() and not plain.exists():
            tmp = plain.with_suffix(".part")
            try:
                with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError, zlib.error) as err:  # truncated or not gzip at all
                tmp.unlink(missing_ok=True)
                raise DataNotFoundError(f"cannot unpack {packed}: {err}. Replace it with the official file.") from err
            tmp.replace(plain)


# --------------------------------------------------------------------------------- MedMNIST


def _medmnist_2d_flags() -> list[str]:
    import medmnist

    return [
        flag
        for flag, info in medmnist.INFO.items()
        if not flag.endswith("3d") and info["task"] in ("multi-class", "binary-class", "ordinal-regression")
    ]


def _load_medmnist(flag: str, root: Path, download: bool) -> DatasetBundle:
    """A 2D MedMNIST set at 28x28 via the official class (``<root>/<flag>.npz``)."""
    import medmnist

    info = medmnist.INFO[flag]
    cls = getattr(medmnist, info["python_class"])
    npz = root / f"{flag}.npz"
    if not npz.exists() and not download:
        raise DataNotFoundError(
            f"{flag} file missing: expected {npz} (MedMNIST, md5 {info['MD5']}). Download it from "
            f"{info['url']} into {root}, point --data-root / ${DATA_ENV_VAR} at the folder that has it, "
            "or allow downloading (download=True / --download)."
        )
    root.mkdir(parents=True, exist_ok=True)
    try:
        # len() of a medmnist dataset asserts the official count, so read .imgs/.labels directly.
        train, test = (cls(split=s, root=str(root), download=download) for s in ("train", "test"))
    except (RuntimeError, OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataNotFoundError(f"could not load {flag} from {npz}: {err}") from err
    num_classes = len(info["label"])
    return DatasetBundle(
        flag,
        _indexed(_normalized_images(train.imgs, 0.5, 0.5), train.labels, num_classes),
        _indexed(_normalized_images(test.imgs, 0.5, 0.5), test.labels, num_classes),
        num_classes,
        (info["n_channels"], IMAGE_SIZE, IMAGE_SIZE),
    )


# ----------------------------------------------------------------------- scikit-learn extras

_SKLEARN_TEST_FRACTION = 0.2


def _split_positions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train/test split for sets that ship without one (seed 0 forever: ids stay stable)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * _SKLEARN_TEST_FRACTION))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


@register_dataset("digits")
def load_digits_28(root: Path, download: bool) -> DatasetBundle:
    """scikit-learn's 1,797 real 8x8 handwritten digits, upsampled to 28x28 (bundled, no files)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    return _split_bundle("digits", x, digits.target, 10, (1, IMAGE_SIZE, IMAGE_SIZE))


@register_dataset("breast_cancer")
def load_breast_cancer_tabular(root: Path, download: bool) -> DatasetBundle:
    """Wisconsin Diagnostic Breast Cancer: 569 real cases, 30 features, 2 classes (MLP only)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.as_tensor(data.data, dtype=torch.float32)
    train_pos, _ = _split_positions(len(x))
    mean, std = x[train_pos].mean(0), x[train_pos].std(0).clamp_min(1e-6)
    return _split_bundle("breast_cancer", (x - mean) / std, data.target, 2, (x.shape[1],))


def _split_bundle(name: str, x: torch.Tensor, y: np.ndarray, num_classes: int, shape: tuple[int, ...]) -> DatasetBundle:
    train_pos, test_pos = _split_positions(len(x))
    labels = torch.as_tensor(y, dtype=torch.int64)
    # Ids are positions in the original (unsplit) set, so they stay unique across splits.
    train = IndexedDataset(x[train_pos], labels[train_pos], torch.as_tensor(train_pos, dtype=torch.int64), num_classes)
    test = IndexedDataset(x[test_pos], labels[test_pos], torch.as_tensor(test_pos, dtype=torch.int64), num_classes)
    return DatasetBundle(name, train, test, num_classes, shape)


def check_dataset_name(name: str) -> None:
    """Raise UnknownNameError for a name no loader serves (cheap; loads nothing)."""
    if name.lower() not in _LOADERS and name.lower() not in _medmnist_2d_flags():
        raise UnknownNameError("dataset", name, available_datasets())
