"""Which tensors a history records and where each layer's entries sit inside one step record.

``ParamLayout`` is the model's trainable-parameter layout (names and shapes, in
``model.named_parameters()`` order). ``RecordLayout`` turns it plus a HistoryConfig into a
fixed-size byte layout of one step record::

    header (8 B: b"STEP", step u32)
    indices of every pruned layer  (int64 layers first, then int32 layers)
    values of every layer          (float32 or float16, layout order)

A layer whose keep count equals its size (every layer when keep_ratio = 1.0) stores its
values densely, without indices. Grouping segments by item size keeps every segment
naturally aligned inside the record buffer, so they can be viewed as typed arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedunlearn.config import HistoryConfig
from fedunlearn.history.pruning import layer_keep_count

#: Record header: magic and step number (``struct`` format, little endian).
RECORD_HEADER = struct.Struct("<4sI")
RECORD_MAGIC = b"STEP"
#: Layers with at least this many entries store their indices as int64 instead of int32.
INT64_INDEX_THRESHOLD = 2**31
VALUE_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


@dataclass(frozen=True)
class LayerSpec:
    """One trainable parameter: its name and shape."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of entries."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParamLayout:
    """The trainable parameters of a model, in ``named_parameters()`` order.

    Buffers (BatchNorm running statistics, ``num_batches_tracked``) are not parameters and
    are not part of the layout.

    >>> ParamLayout.from_model(nn.Linear(4, 3)).layers
    (LayerSpec(name='weight', shape=(3, 4)), LayerSpec(name='bias', shape=(3,)))
    """

    layers: tuple[LayerSpec, ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> ParamLayout:
        """Read the layout of ``model.named_parameters()`` (frozen parameters included)."""
        return cls(tuple(LayerSpec(name, tuple(p.shape)) for name, p in model.named_parameters()))

    @classmethod
    def from_json(cls, obj: Sequence[Any]) -> ParamLayout:
        """Inverse of ``to_json`` (raises KeyError/TypeError/ValueError on malformed input)."""
        return cls(tuple(LayerSpec(str(item["name"]), tuple(int(d) for d in item["shape"])) for item in obj))

    def to_json(self) -> list[dict[str, Any]]:
        """Return a JSON-serialisable list of ``{"name", "shape"}``."""
        return [{"name": layer.name, "shape": list(layer.shape)} for layer in self.layers]

    def __iter__(self) -> Iterator[LayerSpec]:
        return iter(self.layers)

    @property
    def numel(self) -> int:
        """|theta|: total number of parameter entries."""
        return sum(layer.numel for layer in self.layers)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape."""
        return {layer.name: layer.shape for layer in self.layers}

    def difference(self, other: ParamLayout) -> str | None:
        """Describe how ``other`` differs from this layout (None if it does not)."""
        mine, theirs = self.shapes(), other.shapes()
        problems = [f"missing parameter {n!r}" for n in mine if n not in theirs]
        problems += [f"unexpected parameter {n!r}" for n in theirs if n not in mine]
        problems += [
            f"{n!r} has shape {list(theirs[n])}, expected {list(mine[n])}"
            for n in mine
            if n in theirs and theirs[n] != mine[n]
        ]
        if not problems and list(mine) != list(theirs):
            problems.append("parameters are in a different order")
        return "; ".join(problems) if problems else None


@dataclass(frozen=True)
class LayerSlot:
    """Where one layer's kept entries sit in a step record (byte offsets from record start)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    keep: int
    index_dtype: np.dtype[Any] | None  # None: stored densely (keep == numel), no indices
    index_offset: int
    value_offset: int


class RecordLayout:
    """The byte layout of one step record for a ParamLayout and a HistoryConfig."""

    def __init__(self, layout: ParamLayout, config: HistoryConfig) -> None:
        self.layout = layout
        self.value_dtype: np.dtype[Any] = VALUE_DTYPES[config.value_dtype]
        keeps = [layer_keep_count(layer.numel, config.keep_ratio) for layer in layout]
        index_dtypes = [_index_dtype(layer.numel, keep) for layer, keep in zip(layout, keeps, strict=True)]
        order = sorted(range(len(keeps)), key=lambda i: -_itemsize(index_dtypes[i]))
        index_offsets, offset = [0] * len(keeps), RECORD_HEADER.size
        for i in order:
            index_offsets[i] = offset
            offset += keeps[i] * _itemsize(index_dtypes[i])
        self.values_start = offset
        slots = []
        for i, layer in enumerate(layout):
            slot = LayerSlot(layer.name, layer.shape, layer.numel, keeps[i], index_dtypes[i], index_offsets[i], offset)
            slots.append(slot)
            offset += keeps[i] * self.value_dtype.itemsize
        self.slots: tuple[LayerSlot, ...] = tuple(slots)
        self.record_bytes = offset

    def index_view(self, buffer: np.ndarray, slot: LayerSlot) -> np.ndarray | None:
        """View the indices of ``slot`` inside a record buffer (None for densely stored layers)."""
        if slot.index_dtype is None:
            return None
        end = slot.index_offset + slot.keep * slot.index_dtype.itemsize
        return buffer[slot.index_offset : end].view(slot.index_dtype)

    def value_view(self, buffer: np.ndarray, slot: LayerSlot) -> np.ndarray:
        """View the values of ``slot`` inside a record buffer."""
        end = slot.value_offset + slot.keep * self.value_dtype.itemsize
        return buffer[slot.value_offset : end].view(self.value_dtype)

    def all_values(self, buffer: np.ndarray) -> np.ndarray:
        """View every layer's values of a record as one array."""
        return buffer[self.values_start : self.record_bytes].view(self.value_dtype)

    def accumulate(self, flat: dict[str, torch.Tensor], buffer: np.ndarray, *, weight: float) -> None:
        """Add ``weight`` times a record's entries to flat float32 tensors, one per layer."""
        for slot in self.slots:
            values = torch.from_numpy(self.value_view(buffer, slot)).to(torch.float32)
            indices = self.index_view(buffer, slot)
            if indices is None:
                flat[slot.name].add_(values, alpha=weight)
            else:
                flat[slot.name].index_add_(0, torch.from_numpy(indices), values, alpha=weight)


def layout_digest(layout: ParamLayout, config: HistoryConfig) -> bytes:
    """sha256 of the layout and the recording settings; stamped into every round file."""
    body = {"layout": layout.to_json(), "settings": recording_settings(config)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()


def recording_settings(config: HistoryConfig) -> dict[str, Any]:
    """Return the HistoryConfig fields that determine what is on disk (``enabled`` does not)."""
    return {"keep_ratio": config.keep_ratio, "selector": config.selector, "value_dtype": config.value_dtype}


def _index_dtype(numel: int, keep: int) -> np.dtype[Any] | None:
    if keep >= numel:
        return None
    return np.dtype("<i4") if numel < INT64_INDEX_THRESHOLD else np.dtype("<i8")


def _itemsize(dtype: np.dtype[Any] | None) -> int:
    return 0 if dtype is None else dtype.itemsize
