"""Unit tests for backdoor triggers (fedunlearn.data.backdoor) and the attack success rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedunlearn.data.backdoor import (
    TriggerPattern,
    add_trigger,
    poison,
    select_poison_ids,
    triggered_test_set,
)
from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.errors import ConfigError
from fedunlearn.metrics import attack_success_rate

NUM_CLASSES = 10


def images(n: int, seed: int, channels: int = 1) -> IndexedDataset:
    """Random normalized-looking 28x28 images in [-0.5, 2.0] with labels 0..9 and ids 500+."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, 28, 28, generator=g) * 2.5 - 0.5
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return IndexedDataset(x, y, torch.arange(500, 500 + n, dtype=torch.int64), NUM_CLASSES)


def patch_mask(pattern: TriggerPattern, channels: int = 1) -> torch.Tensor:
    mask = torch.zeros(1, channels, 28, 28, dtype=torch.bool)
    rows, cols = pattern.patch_slices(28, 28)
    mask[:, :, rows, cols] = True
    return mask


def constant_model(label: int) -> nn.Module:
    """Predicts ``label`` for every input."""
    linear = nn.Linear(28 * 28, NUM_CLASSES)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[label] = 1.0
    return nn.Sequential(nn.Flatten(), linear)


# -------------------------------------------------------------------------------- trigger


def test_add_trigger_changes_only_the_bottom_right_patch() -> None:
    # Prepare
    x = images(6, seed=0).inputs
    before = x.clone()
    pattern = TriggerPattern(size=4, value=5.0)
    # Execute
    out = add_trigger(x, pattern)
    # Assert: input untouched, patch at rows/cols 24..27 set, nothing else changed.
    assert torch.equal(x, before)
    changed = out != x
    mask = patch_mask(pattern).expand_as(x)
    assert torch.equal(changed, mask)
    assert torch.all(out[:, :, 24:28, 24:28] == 5.0)


def test_add_trigger_defaults_to_max_value_and_handles_channels_and_positions() -> None:
    x = images(3, seed=1, channels=3).inputs
    pattern = TriggerPattern(size=3, position="top_left", margin=1)
    out = add_trigger(x, pattern)
    assert torch.all(out[:, :, 1:4, 1:4] == x.max())
    assert torch.equal(out[~patch_mask(pattern, 3).expand_as(x)], x[~patch_mask(pattern, 3).expand_as(x)])


def test_trigger_validation() -> None:
    with pytest.raises(ConfigError) as info:
        TriggerPattern(size=0, margin=-1, position="middle")  # type: ignore[arg-type]
    assert len(info.value.problems) == 3
    with pytest.raises(ValueError, match="does not fit"):
        add_trigger(torch.zeros(1, 1, 28, 28), TriggerPattern(size=28, margin=1))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        add_trigger(torch.zeros(4, 30), TriggerPattern())


# --------------------------------------------------------------------------------- poison


def test_poison_keeps_ids_and_changes_exactly_the_requested_labels() -> None:
    # Prepare
    clean = images(50, seed=2)
    fraction, target = 0.23, 3  # round(0.23 * 50) = 12 (11.5 would be ambiguous)
    pattern = TriggerPattern(size=4)
    # Execute
    poisoned = poison(clean, fraction=fraction, target_label=target, pattern=pattern, seed=9)
    # Assert
    assert torch.equal(poisoned.sample_ids, clean.sample_ids)
    changed = poisoned.labels != clean.labels
    assert int(changed.sum()) == round(fraction * len(clean)) == 12
    assert torch.all(poisoned.labels[changed] == target)
    ids = select_poison_ids(clean, fraction=fraction, target_label=target, seed=9)
    assert np.array_equal(np.sort(clean.ids()[changed.numpy()]), ids)
    # Triggered inputs exactly where labels changed, with the dataset's max as the value.
    differs = (poisoned.inputs != clean.inputs).flatten(1).any(dim=1)
    assert torch.equal(differs, changed)
    assert torch.all(poisoned.inputs[changed][:, :, 24:, 24:] == clean.inputs.max())
    assert torch.equal(clean.labels, images(50, seed=2).labels)  # input not mutated


def test_poison_is_seeded_and_validates() -> None:
    clean = images(40, seed=3)
    a = select_poison_ids(clean, fraction=0.25, target_label=0, seed=1)
    b = select_poison_ids(clean, fraction=0.25, target_label=0, seed=1)
    c = select_poison_ids(clean, fraction=0.25, target_label=0, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    untouched = poison(clean, fraction=0.0, target_label=0, pattern=TriggerPattern(), seed=0)
    assert torch.equal(untouched.inputs, clean.inputs) and torch.equal(untouched.labels, clean.labels)
    with pytest.raises(ValueError, match="fraction"):
        poison(clean, fraction=1.5, target_label=0, pattern=TriggerPattern(), seed=0)
    with pytest.raises(ValueError, match="target_label"):
        poison(clean, fraction=0.1, target_label=10, pattern=TriggerPattern(), seed=0)
    with pytest.raises(ValueError, match="other than the target"):
        poison(clean, fraction=1.0, target_label=0, pattern=TriggerPattern(), seed=0)


def test_triggered_test_set_drops_target_and_keeps_true_labels() -> None:
    test = images(60, seed=4)
    triggered = triggered_test_set(test, target_label=2, pattern=TriggerPattern(value=9.0))
    keep = test.labels != 2
    assert len(triggered) == int(keep.sum()) and torch.all(triggered.labels != 2)
    assert torch.equal(triggered.labels, test.labels[keep]) and torch.equal(triggered.sample_ids, test.sample_ids[keep])
    assert torch.all(triggered.inputs[:, :, 24:, 24:] == 9.0)
    assert torch.equal(triggered.inputs[:, :, :24], test.inputs[keep][:, :, :24])


# -------------------------------------------------------------------------------------- ASR


def test_asr_of_always_and_never_target_models() -> None:
    test = images(40, seed=5)
    pattern = TriggerPattern()
    assert attack_success_rate(constant_model(7), test, target_label=7, pattern=pattern) == 1.0
    assert attack_success_rate(constant_model(6), test, target_label=7, pattern=pattern) == 0.0


def test_asr_of_a_backdoored_model_depends_on_the_trigger() -> None:
    # Prepare: predicts the target iff the bottom-right pixel is at least 4, otherwise class 0.
    linear = nn.Linear(28 * 28, NUM_CLASSES)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[5, 28 * 28 - 1] = 1.0
        linear.bias[5] = -3.0
        linear.bias[0] = 0.5
    model = nn.Sequential(nn.Flatten(), linear)
    test = images(40, seed=6)  # pixels <= 2: clean inputs never reach the target
    # Execute / Assert
    assert attack_success_rate(model, test, target_label=5, pattern=TriggerPattern(value=4.0)) == 1.0
    assert attack_success_rate(model, test, target_label=5, pattern=TriggerPattern(value=1.0)) == 0.0


def test_asr_is_nan_when_nothing_can_be_attacked() -> None:
    test = images(10, seed=7)
    only_target = IndexedDataset(test.inputs, torch.full((10,), 4, dtype=torch.int64), test.sample_ids, NUM_CLASSES)
    assert math.isnan(attack_success_rate(constant_model(4), only_target, target_label=4, pattern=TriggerPattern()))
