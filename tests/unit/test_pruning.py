"""Unit tests of layer-wise partial selection: keep counts, top-k, random, dense masks, registry."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from fedunlearn.errors import ConfigError, UnknownNameError
from fedunlearn.history import (
    available_selectors,
    layer_keep_count,
    mask_layerwise,
    pruning,
    register_selector,
    select_layerwise,
)


def _delta(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Layers of several shapes; values are distinct with probability 1."""
    return {
        "conv.weight": torch.randn(4, 3, 5, 5, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
        "fc.weight": torch.randn(10, 100, generator=generator) * 1e-4,  # tiny updates still get their share
        "fc.bias": torch.randn(10, generator=generator),
        "scalar": torch.randn(1, generator=generator),
    }


@pytest.mark.parametrize(
    ("numel", "ratio", "expected"),
    [
        (100, 0.07, 7),
        (100, 0.1, 10),
        (100, 0.29, 29),
        (1000, 0.57, 570),
        (10, 0.01, 1),
        (3, 0.5, 2),
        (7, 1.0, 7),
        (1, 0.01, 1),
        (48000, 0.1, 4800),
        (0, 0.5, 0),
    ],
)
def test_layer_keep_count_examples(numel: int, ratio: float, expected: int) -> None:
    # Assert
    assert layer_keep_count(numel, ratio) == expected


def test_layer_keep_count_matches_exact_rational_arithmetic() -> None:
    # Prepare: ratios as written in decimal, computed exactly with fractions
    ratios = [round(0.01 * i, 2) for i in range(1, 101)] + [0.001, 0.005, 0.333]
    for ratio in ratios:
        exact = Fraction(str(ratio))
        for numel in range(1, 301):
            # Execute
            got = layer_keep_count(numel, ratio)
            # Assert
            assert got == max(1, math.ceil(exact * numel)), (numel, ratio)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan")])
def test_keep_ratio_outside_unit_interval_is_rejected(ratio: float) -> None:
    # Assert
    with pytest.raises(ConfigError, match="keep_ratio must be in \\(0, 1\\]"):
        select_layerwise({"w": torch.ones(3)}, keep_ratio=ratio)
    with pytest.raises(ConfigError):
        layer_keep_count(10, ratio)


@pytest.mark.parametrize("ratio", [0.01, 0.07, 0.1, 0.5])
def test_topk_keeps_exact_count_per_layer(generator: torch.Generator, ratio: float) -> None:
    # Prepare
    delta = _delta(generator)
    # Execute
    sparse = select_layerwise(delta, keep_ratio=ratio, selector="topk")
    # Assert
    for name, tensor in delta.items():
        assert sparse[name].count == max(1, math.ceil(Fraction(str(ratio)) * tensor.numel()))
        assert len(set(sparse[name].indices.tolist())) == sparse[name].count


def test_topk_picks_exactly_the_largest_magnitudes(generator: torch.Generator) -> None:
    # Prepare
    delta = _delta(generator)
    # Execute
    sparse = select_layerwise(delta, keep_ratio=0.1, selector="topk")
    # Assert
    for name, tensor in delta.items():
        flat = tensor.reshape(-1)
        indices, values = sparse[name]
        kept = set(indices.tolist())
        threshold = flat[indices].abs().min()
        dropped = torch.tensor([i for i in range(flat.numel()) if i not in kept], dtype=torch.long)
        assert torch.equal(values, flat[indices])
        if dropped.numel():
            assert flat[dropped].abs().max() < threshold


def test_random_selector_same_counts_and_reproducible(generator: torch.Generator) -> None:
    # Prepare
    delta = _delta(generator)

    def pick(seed: int) -> dict[str, list[int]]:
        generator = torch.Generator().manual_seed(seed)
        sparse = select_layerwise(delta, keep_ratio=0.2, selector="random", generator=generator)
        return {name: sorted(layer.indices.tolist()) for name, layer in sparse.items()}

    # Execute
    first, again, other = pick(1), pick(1), pick(2)
    # Assert
    topk = select_layerwise(delta, keep_ratio=0.2)
    assert {n: len(v) for n, v in first.items()} == {n: layer.count for n, layer in topk.items()}
    assert first == again
    assert first["conv.weight"] != other["conv.weight"]
    assert all(len(set(v)) == len(v) for v in first.values())


def test_keep_ratio_one_keeps_everything(generator: torch.Generator) -> None:
    # Prepare
    delta = _delta(generator)
    shapes = {name: tuple(t.shape) for name, t in delta.items()}
    # Execute
    dense = select_layerwise(delta, keep_ratio=1.0).to_dense(shapes)
    # Assert
    assert all(torch.equal(dense[name], delta[name]) for name in delta)


def test_to_dense_zeros_unselected_and_nbytes(generator: torch.Generator) -> None:
    # Prepare
    delta = _delta(generator)
    shapes = {name: tuple(t.shape) for name, t in delta.items()}
    sparse = select_layerwise(delta, keep_ratio=0.1)
    # Execute
    dense = sparse.to_dense(shapes)
    # Assert
    for name, tensor in delta.items():
        assert dense[name].shape == tensor.shape
        assert int((dense[name] != 0).sum()) == sparse[name].count
        assert torch.equal(dense[name].reshape(-1)[sparse[name].indices], sparse[name].values)
    kept = sum(layer.count for layer in sparse.values())
    assert sparse.nbytes(index_bytes=4, value_bytes=2) == kept * 6


def test_mask_layerwise_equals_dense_of_select(generator: torch.Generator) -> None:
    # Prepare
    delta = _delta(generator)
    original = {name: t.clone() for name, t in delta.items()}
    shapes = {name: tuple(t.shape) for name, t in delta.items()}
    for selector in ("topk", "random"):
        # Execute
        masked = mask_layerwise(delta, keep_ratio=0.1, selector=selector, generator=torch.Generator().manual_seed(3))
        sparse = select_layerwise(delta, keep_ratio=0.1, selector=selector, generator=torch.Generator().manual_seed(3))
        # Assert
        expected = sparse.to_dense(shapes)
        assert all(torch.equal(masked[name], expected[name]) for name in delta)
    assert all(torch.equal(delta[name], original[name]) for name in delta)  # inputs untouched


def test_mask_layerwise_keep_one_returns_copies(generator: torch.Generator) -> None:
    # Prepare
    delta = _delta(generator)
    # Execute
    masked = mask_layerwise(delta, keep_ratio=1.0)
    masked["conv.bias"].zero_()
    # Assert
    assert not torch.equal(delta["conv.bias"], masked["conv.bias"])


def test_unknown_selector_lists_registered_names() -> None:
    # Assert
    with pytest.raises(UnknownNameError, match="random, topk"):
        select_layerwise({"w": torch.ones(4)}, keep_ratio=1.0, selector="largest")
    with pytest.raises(UnknownNameError):
        mask_layerwise({"w": torch.ones(4)}, keep_ratio=0.5, selector="largest")


def test_register_selector_adds_a_name_once() -> None:
    # Prepare
    def first_k(flat: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.arange(k)

    try:
        register_selector("first_k_test")(first_k)
        # Execute
        sparse = select_layerwise({"w": torch.arange(10.0)}, keep_ratio=0.3, selector="first_k_test")
        # Assert
        assert "first_k_test" in available_selectors()
        assert sparse["w"].indices.tolist() == [0, 1, 2]
        with pytest.raises(ConfigError, match="already registered"):
            register_selector("first_k_test")(first_k)
    finally:
        pruning._SELECTORS.pop("first_k_test", None)


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.03, 0.05, 0.1, 0.3])
@pytest.mark.parametrize("pattern", ["normal", "sampled_positions_large", "ties"])
def test_largest_positions_exact_on_large_layers(generator: torch.Generator, fraction: float, pattern: str) -> None:
    # Prepare: large enough for the sampled-threshold path; patterns that defeat the sample
    n = 50_000
    magnitude = torch.randn(n, generator=generator).abs().numpy()
    if pattern == "sampled_positions_large":
        magnitude[:: n // 1024] = 100.0  # the strided sample sees only huge values
    elif pattern == "ties":
        magnitude = (magnitude * 4).round().astype(np.float32)  # many equal magnitudes
    k = layer_keep_count(n, fraction)
    # Execute
    picked = pruning.largest_positions(magnitude, k)
    # Assert: exactly k distinct positions whose values are the k largest
    assert picked.shape == (k,) and np.unique(picked).shape == (k,)
    np.testing.assert_array_equal(np.sort(magnitude[picked]), np.sort(magnitude)[n - k :])
