"""Write small datasets in the official on-disk formats, so loader tests run the real loading code.

- MNIST: the four IDX files (``idx3`` images, magic 2051; ``idx1`` labels, magic 2049; big-endian
  int32 dimensions, then uint8 data) under ``<root>/MNIST/raw``, plain or ``.gz``-compressed, as
  torchvision reads them.
- MedMNIST: ``<root>/<flag>.npz`` with the six arrays ``{train,val,test}_{images,labels}``;
  images uint8 ``(N, 28, 28)`` (``(N, 28, 28, 3)`` for RGB flags such as pathmnist), labels an
  integer array ``(N, 1)``, as ``medmnist.<Class>(split=..., root=...)`` reads them.

The pixel values and labels are drawn from a seeded numpy generator and returned, so tests can
compare what the loader produced with what was written.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SIZE = 28
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension
MNIST_SPLITS = {"train": "train", "test": "t10k"}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format: magic ``0x0800 | ndim``, big-endian dims, data."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer supports uint8 only, got {array.dtype}")
    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array).tobytes()


@dataclass(frozen=True)
class MnistSplit:
    """What was written for one split: the raw uint8 images and the labels."""

    images: np.ndarray
    labels: np.ndarray


def random_images(n: int, *, rng: np.random.Generator, channels: int | None = None) -> np.ndarray:
    """``n`` uint8 images of 28x28 (``channels`` last when given); image 0 is all 0, image 1 all 255."""
    shape = (n, IMAGE_SIZE, IMAGE_SIZE) if channels is None else (n, IMAGE_SIZE, IMAGE_SIZE, channels)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if n > 0:
        images[0] = 0
    if n > 1:
        images[1] = 255
    return images


def write_mnist_raw(
    root: str | Path,
    *,
    n_train: int = 12,
    n_test: int = 5,
    seed: int = 0,
    compress: bool = False,
    splits: tuple[str, ...] = ("train", "test"),
) -> dict[str, MnistSplit]:
    """Write MNIST IDX files for ``splits`` into ``<root>/MNIST/raw``; ``.gz`` only if ``compress``."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written: dict[str, MnistSplit] = {}
    for split in splits:
        n = n_train if split == "train" else n_test
        images = random_images(n, rng=rng)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        prefix = MNIST_SPLITS[split]
        _write(raw / f"{prefix}-images-idx3-ubyte", idx_bytes(images), compress=compress)
        _write(raw / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels), compress=compress)
        written[split] = MnistSplit(images, labels)
    return written


def _write(path: Path, data: bytes, *, compress: bool) -> None:
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_medmnist_npz(
    root: str | Path,
    flag: str,
    *,
    num_classes: int,
    n_train: int = 12,
    n_val: int = 4,
    n_test: int = 6,
    rgb: bool = False,
    seed: int = 0,
    label_dtype: type[np.integer] = np.uint8,
) -> dict[str, np.ndarray]:
    """Write ``<root>/<flag>.npz`` in the official MedMNIST layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        arrays[f"{split}_images"] = random_images(n, rng=rng, channels=3 if rgb else None)
        arrays[f"{split}_labels"] = rng.integers(0, num_classes, size=(n, 1)).astype(label_dtype)
    Path(root).mkdir(parents=True, exist_ok=True)
    np.savez_compressed(Path(root) / f"{flag}.npz", **arrays)
    return arrays
