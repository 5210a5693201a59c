"""Layer-wise partial selection of an update: keep ceil(rho * |Delta_l|) entries per layer.

ALGORITHMS.md, "Layer-wise partial selection" (our reading of Gogineni & Nadimi 2024,
arXiv 2403.07611, whose method text and code are not available): for every layer ``l``
independently keep the ``ceil(rho * |Delta_l|)`` entries (at least one) with the largest
magnitude and zero the rest. Selecting per layer, not globally, keeps layers with small
updates represented. A ``random`` selector (same counts, uniform positions) is offered for
ablation. Selectors live in a registry; add one with ``@register_selector("name")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedunlearn.errors import ConfigError, UnknownNameError

#: A selector returns the flat int64 positions of ``k`` entries of a flat tensor.
Selector = Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]

#: Optional numpy twin of a selector for CPU arrays (``flat``, ``k``) -> positions; the
#: recorder uses it to skip torch/numpy round trips on every step. Must select the same set.
NumpySelector = Callable[[np.ndarray, int], np.ndarray]

_SELECTORS: dict[str, Selector] = {}
_NUMPY_SELECTORS: dict[str, NumpySelector] = {}

# Relative tolerance under which rho * numel counts as an integer (0.07 * 100 = 7.000000000000001).
_INTEGER_TOLERANCE = 1e-9


def register_selector(name: str, *, numpy: NumpySelector | None = None) -> Callable[[Selector], Selector]:
    """Register ``fn(flat, k, generator) -> int64 positions`` as selector ``name``.

    ``numpy`` optionally gives a deterministic numpy twin for CPU arrays (see NumpySelector).
    """

    def decorator(fn: Selector) -> Selector:
        if name in _SELECTORS:
            raise ConfigError(f"selector {name!r} is already registered; register the new one under another name")
        _SELECTORS[name] = fn
        if numpy is not None:
            _NUMPY_SELECTORS[name] = numpy
        return fn

    return decorator


def available_selectors() -> list[str]:
    """Return the registered selector names, sorted."""
    return sorted(_SELECTORS)


def get_selector(name: str) -> Selector:
    """Look up selector ``name``; raise UnknownNameError listing the known names."""
    try:
        return _SELECTORS[name]
    except KeyError:
        raise UnknownNameError("selector", name, _SELECTORS) from None


def get_numpy_selector(name: str) -> NumpySelector | None:
    """Return the numpy twin of selector ``name`` (None if it has none)."""
    get_selector(name)
    return _NUMPY_SELECTORS.get(name)


def _largest_magnitudes(flat: np.ndarray, k: int) -> np.ndarray:
    return largest_positions(np.abs(flat), k)


@register_selector("topk", numpy=_largest_magnitudes)
def _select_topk(flat: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the ``k`` entries of largest magnitude (order unspecified).

    On CPU this runs in numpy (``largest_positions``), several times faster than
    ``torch.topk`` for k in the thousands, which matters because the recorder selects on
    every training step.
    """
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_FLOATS:
        return torch.from_numpy(_largest_magnitudes(flat.detach().numpy(), k))
    return torch.topk(flat.abs(), k, sorted=False).indices


def largest_positions(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest entries of a flat array (exact; order unspecified).

    ``np.argpartition`` (introselect) over the layer: on one core about 0.13 ms for k = 4,800
    of 48,000 entries, where ``torch.topk(sorted=False)`` takes 0.7 ms. For large layers with
    k <= 5% of the entries, a strided sample of ``_SAMPLE`` entries first gives a threshold
    that about 1.25 k entries exceed, and the exact top k is taken among those candidates
    only (k = 480 of 48,000: 0.04 ms instead of 0.1 ms). Every entry outside the candidates
    is below the threshold, hence below the k-th largest, so the result stays exact; if the
    sample was unlucky (fewer than k candidates) the whole layer is partitioned instead.
    """
    n = magnitude.shape[0]
    if n >= 8 * _SAMPLE and 20 * k <= n:
        sample = magnitude[:: n // _SAMPLE]
        rank = min(sample.shape[0] - 1, int(1.25 * sample.shape[0] * k / n) + 8)
        threshold = np.partition(sample, sample.shape[0] - 1 - rank)[sample.shape[0] - 1 - rank]
        candidates = np.flatnonzero(magnitude >= threshold)
        if candidates.shape[0] >= k:
            split = candidates.shape[0] - k
            return candidates[np.argpartition(magnitude[candidates], split)[split:]]
    return np.argpartition(magnitude, n - k)[n - k :]


_SAMPLE = 1024
_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


@register_selector("random")
def _select_random(flat: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``k`` distinct positions uniformly (reproducible given ``generator``)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(flat.numel(), generator=generator, device=device)[:k].to(flat.device)


def check_keep_ratio(keep_ratio: float) -> None:
    """Raise ConfigError unless ``keep_ratio`` is in (0, 1]."""
    if not (0.0 < keep_ratio <= 1.0):
        raise ConfigError(f"keep_ratio must be in (0, 1], got {keep_ratio}; use 1.0 to keep every entry")


def layer_keep_count(numel: int, keep_ratio: float) -> int:
    """``max(1, ceil(keep_ratio * numel))``, capped at ``numel`` (0 for an empty layer).

    A product within a relative 1e-9 of an integer counts as that integer, so float error
    cannot add an entry: ``layer_keep_count(100, 0.07) == 7`` although ``0.07 * 100`` is
    ``7.000000000000001`` in binary floating point.

    >>> layer_keep_count(100, 0.07), layer_keep_count(10, 0.01), layer_keep_count(6, 1.0)
    (7, 1, 6)
    """
    check_keep_ratio(keep_ratio)
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    if numel == 0:
        return 0
    product = keep_ratio * numel
    nearest = round(product)
    exact = abs(product - nearest) <= _INTEGER_TOLERANCE * max(1.0, product)
    count = nearest if exact else math.ceil(product)
    return min(numel, max(1, count))


@dataclass(frozen=True)
class SparseLayer:
    """The kept entries of one layer: flat int64 ``indices`` and their ``values``."""

    indices: torch.Tensor
    values: torch.Tensor

    @property
    def count(self) -> int:
        """Return the number of kept entries."""
        return int(self.indices.numel())

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Unpack as ``indices, values = sparse[name]``."""
        return iter((self.indices, self.values))


@dataclass(frozen=True)
class SparseDelta(Mapping[str, SparseLayer]):
    """A layer-wise pruned update: parameter name -> SparseLayer (flat positions, values).

    >>> d = select_layerwise({"w": torch.tensor([[0.1, -3.0], [2.0, 0.0]])}, keep_ratio=0.5)
    >>> sorted(d["w"].indices.tolist()), d.to_dense({"w": (2, 2)})["w"].tolist()
    ([1, 2], [[0.0, -3.0], [2.0, 0.0]])
    """

    layers: Mapping[str, SparseLayer]

    def __getitem__(self, name: str) -> SparseLayer:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def to_dense(self, shapes: Mapping[str, tuple[int, ...] | torch.Size]) -> dict[str, torch.Tensor]:
        """Dense tensors of the given shapes, zero outside the kept entries."""
        missing = sorted(set(self.layers) - set(shapes))
        if missing:
            raise ValueError(f"to_dense got no shape for layer(s) {missing}; pass a shape for every layer")
        dense: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            flat = torch.zeros(math.prod(shapes[name]), dtype=layer.values.dtype, device=layer.values.device)
            flat[layer.indices] = layer.values
            dense[name] = flat.view(tuple(shapes[name]))
        return dense

    def nbytes(self, *, index_bytes: int = 4, value_bytes: int = 4) -> int:
        """Storage of the kept entries at the given bytes per index and per value."""
        return sum(layer.count * (index_bytes + value_bytes) for layer in self.layers.values())


def select_indices(
    flat: torch.Tensor, k: int, *, selector: str = "topk", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flat int64 positions of the ``k`` entries ``selector`` keeps (all of them when k == numel)."""
    if k >= flat.numel():
        return torch.arange(flat.numel(), device=flat.device)
    return get_selector(selector)(flat, k, generator)


def select_layerwise(
    delta: Mapping[str, torch.Tensor],
    *,
    keep_ratio: float,
    selector: str = "topk",
    generator: torch.Generator | None = None,
) -> SparseDelta:
    """Keep ``layer_keep_count(numel, keep_ratio)`` entries of every tensor independently.

    Parameters
    ----------
    delta
        Named update tensors (any shapes); not modified.
    keep_ratio
        rho in (0, 1]; 1.0 keeps everything.
    selector
        ``"topk"`` (largest |value|) or ``"random"`` (uniform positions), or any name added
        with ``register_selector``.
    generator
        Source of randomness for the ``random`` selector (reproducible when seeded).
    """
    get_selector(selector)  # fail on an unknown name even when every layer is kept whole
    layers: dict[str, SparseLayer] = {}
    for name, tensor in delta.items():
        flat = tensor.detach().reshape(-1)
        idx = select_indices(flat, layer_keep_count(flat.numel(), keep_ratio), selector=selector, generator=generator)
        layers[name] = SparseLayer(idx, flat[idx])
    return SparseDelta(layers)


def mask_layerwise(
    delta: Mapping[str, torch.Tensor],
    *,
    keep_ratio: float,
    selector: str = "topk",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Dense copy of ``delta`` with the entries ``select_layerwise`` would drop set to zero.

    Used by the partial label-flip and partial ascent methods on every step, so it avoids
    building a SparseDelta: one selection and one scatter per layer. Inputs are not modified.
    """
    get_selector(selector)
    masked: dict[str, torch.Tensor] = {}
    for name, tensor in delta.items():
        flat = tensor.detach().reshape(-1)
        k = layer_keep_count(flat.numel(), keep_ratio)
        if k >= flat.numel():
            masked[name] = tensor.detach().clone()
            continue
        idx = get_selector(selector)(flat, k, generator)
        out = torch.zeros_like(flat).scatter_(0, idx, flat.gather(0, idx))
        masked[name] = out.view_as(tensor)
    return masked
