"""A machine-wide cache of decoded, normalized datasets, memory-mapped on load.

Every Flower ClientApp process of a deployed SuperNode (one per message) would otherwise
import torchvision and decode and normalize the whole dataset again. The first load through
the official loader writes ``<cache>/<name>-<key>.pt``; later loads map it in milliseconds.
The key covers the dataset name, the data root and the size and mtime of every source file,
so replaced files are never served stale. ``FEDUNLEARN_CACHE=off`` disables it; the default
folder is ``~/.cache/fedunlearn``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import torch

from fedunlearn.atomic import write_bytes_atomic
from fedunlearn.data.indexed import IndexedDataset

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "FEDUNLEARN_CACHE"
FORMAT_VERSION = 1


def cache_dir() -> Path | None:
    """The cache folder, or None when disabled (``FEDUNLEARN_CACHE=off``)."""
    value = os.environ.get(CACHE_ENV_VAR, "")
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "fedunlearn"


def cache_path(name: str, root: Path, sources: list[Path]) -> Path | None:
    """Where the decoded ``name`` from these source files is cached (None: no caching)."""
    folder = cache_dir()
    if folder is None or not sources or not all(p.exists() for p in sources):
        return None
    h = hashlib.sha256(f"{FORMAT_VERSION}|{name}|{root.resolve()}".encode())
    for path in sources:
        stat = path.stat()
        h.update(f"|{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return folder / f"{name}-{h.hexdigest()[:20]}.pt"


def read(path: Path) -> dict[str, object] | None:
    """The cached payload, or None if absent or unreadable (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        payload: dict[str, object] = torch.load(path, mmap=True, weights_only=True)
    except Exception as err:  # a torn or foreign file: rebuild rather than fail
        logger.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, err)
        return None
    return payload if payload.get("version") == FORMAT_VERSION else None


def write(path: Path, payload: dict[str, object]) -> None:
    """Write the payload atomically; a read-only or full disk only costs the speed-up."""
    buffer = io.BytesIO()
    torch.save({**payload, "version": FORMAT_VERSION}, buffer)
    try:
        write_bytes_atomic(path, buffer.getvalue())
    except OSError as err:
        logger.warning("could not write dataset cache %s (%s); continuing without it", path, err)


def split_payload(prefix: str, data: IndexedDataset) -> dict[str, object]:
    """The tensors of one split under ``<prefix>_*`` keys."""
    return {f"{prefix}_inputs": data.inputs, f"{prefix}_labels": data.labels, f"{prefix}_ids": data.sample_ids}


def split_from(payload: dict[str, object], prefix: str, num_classes: int) -> IndexedDataset:
    """Rebuild one split from ``split_payload`` keys."""
    tensors = [payload[f"{prefix}_{k}"] for k in ("inputs", "labels", "ids")]
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    return IndexedDataset(tensors[0], tensors[1], tensors[2], num_classes)  # type: ignore[arg-type]
