"""Server-side state math against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from fedunlearn.aggregation import add_scaled, check_state, difference, fedavg_weights, state_digest, weighted_sum


def _state() -> dict[str, torch.Tensor]:
    return {
        "fc.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "fc.bias": torch.tensor([0.5, -0.5]),
        "bn.num_batches_tracked": torch.tensor(4, dtype=torch.int64),
    }


def test_fedavg_weights_are_n_k_over_sum() -> None:
    # Execute
    weights = fedavg_weights([10, 30, 60])

    # Assert
    assert weights == pytest.approx([0.1, 0.3, 0.6])
    assert math.isclose(sum(fedavg_weights([1, 2, 4])), 1.0)
    assert fedavg_weights([7]) == [1.0]
    assert fedavg_weights([0, 5]) == [0.0, 1.0]


@pytest.mark.parametrize(("counts", "text"), [([], "at least one"), ([3, -1], ">= 0"), ([0, 0], "all be 0")])
def test_fedavg_weights_rejects_bad_counts(counts: list[float], text: str) -> None:
    # Execute
    with pytest.raises(ValueError) as caught:
        fedavg_weights(counts)

    # Assert
    assert text in str(caught.value)


def test_weighted_sum_matches_hand_computed_values() -> None:
    # Prepare
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([2, 10], dtype=torch.int64)}
    b = {"w": torch.tensor([3.0, -6.0]), "n": torch.tensor([5, 20], dtype=torch.int64)}

    # Execute
    out = weighted_sum([a, b], [0.25, 0.75])

    # Assert
    # w: 0.25*[1, 2] + 0.75*[3, -6] = [2.5, -4.0]
    assert torch.equal(out["w"], torch.tensor([2.5, -4.0]))
    # n: 0.25*[2, 10] + 0.75*[5, 20] = [4.25, 17.5] -> rounded (half to even) [4, 18], dtype kept
    assert out["n"].dtype == torch.int64
    assert out["n"].tolist() == [4, 18]
    assert out["w"].dtype == torch.float32


def test_weighted_sum_keeps_float64_precision_and_does_not_touch_inputs() -> None:
    # Prepare
    a = {"w": torch.tensor([1.0 + 1e-12], dtype=torch.float64)}
    b = {"w": torch.tensor([1.0], dtype=torch.float64)}

    # Execute
    out = weighted_sum([a, b], [0.5, 0.5])

    # Assert
    assert out["w"].dtype == torch.float64
    assert out["w"].item() == pytest.approx(1.0 + 0.5e-12, abs=1e-15)
    assert a["w"].item() == 1.0 + 1e-12


def test_weighted_sum_of_identical_states_with_fedavg_weights_is_identity() -> None:
    # Prepare
    state = _state()

    # Execute
    out = weighted_sum([state, state, state], fedavg_weights([1, 2, 3]))

    # Assert
    for key, value in state.items():
        assert torch.allclose(out[key].to(torch.float64), value.to(torch.float64))
        assert out[key].dtype == value.dtype


@pytest.mark.parametrize(("n_states", "n_weights"), [(2, 1), (0, 0)])
def test_weighted_sum_needs_one_weight_per_state(n_states: int, n_weights: int) -> None:
    # Execute
    with pytest.raises(ValueError) as caught:
        weighted_sum([_state()] * n_states, [1.0] * n_weights)

    # Assert
    assert f"got {n_states} states and {n_weights} weights" in str(caught.value)


def test_add_scaled_applies_delta_and_copies_other_entries() -> None:
    # Prepare
    state = _state()
    delta = {"fc.bias": torch.tensor([1.0, 2.0])}

    # Execute
    out = add_scaled(state, delta, -0.5)

    # Assert
    assert torch.equal(out["fc.bias"], torch.tensor([0.0, -1.5]))
    assert torch.equal(out["fc.weight"], state["fc.weight"])
    assert out["fc.weight"].data_ptr() != state["fc.weight"].data_ptr()  # a copy, not the same storage
    assert out["bn.num_batches_tracked"].item() == 4
    assert torch.equal(state["fc.bias"], torch.tensor([0.5, -0.5]))  # input untouched


def test_difference_of_floating_entries_and_round_trip_with_add_scaled() -> None:
    # Prepare
    before = _state()
    after = {k: v.clone() for k, v in before.items()}
    after["fc.weight"] += torch.tensor([[0.25, 0.0], [0.0, -1.0]])
    after["bn.num_batches_tracked"] += 1

    # Execute
    delta = difference(after, before)
    restored = add_scaled(after, delta, -1.0)

    # Assert
    assert set(delta) == {"fc.weight", "fc.bias"}  # integer buffers are not deltas
    assert torch.equal(delta["fc.weight"], torch.tensor([[0.25, 0.0], [0.0, -1.0]]))
    assert torch.equal(delta["fc.bias"], torch.zeros(2))
    assert torch.equal(restored["fc.weight"], before["fc.weight"])
    assert difference(after, before, keys=["fc.bias"]).keys() == {"fc.bias"}


def test_check_state_accepts_a_matching_state() -> None:
    # Execute
    problems = check_state(_state(), _state())

    # Assert
    assert problems == []


def test_check_state_reports_missing_and_extra_keys() -> None:
    # Prepare
    candidate = _state()
    del candidate["fc.bias"]
    candidate["intruder"] = torch.zeros(1)

    # Execute
    strict = check_state(candidate, _state())
    lenient = check_state(candidate, _state(), exact_keys=False)

    # Assert
    assert any("missing" in p and "fc.bias" in p for p in strict)
    assert any("unexpected" in p and "intruder" in p for p in strict)
    assert len(strict) == 2
    assert len(lenient) == 1 and "missing" in lenient[0]


def test_check_state_reports_wrong_shape_with_both_shapes() -> None:
    # Prepare
    candidate = _state()
    candidate["fc.weight"] = torch.zeros(2, 3)

    # Execute
    problems = check_state(candidate, _state())

    # Assert
    assert problems == ["fc.weight: shape (2, 3), expected (2, 2)"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_state_reports_non_finite_values(bad: float) -> None:
    # Prepare
    candidate = _state()
    candidate["fc.bias"] = torch.tensor([0.0, bad])

    # Execute
    problems = check_state(candidate, _state())

    # Assert
    assert problems == ["fc.bias: contains NaN or Inf"]


def test_state_digest_is_stable_and_order_independent() -> None:
    # Prepare
    state = _state()
    reordered = dict(reversed(list(_state().items())))

    # Execute
    digest = state_digest(state)

    # Assert
    assert digest == state_digest(state) == state_digest(reordered)
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_state_digest_changes_with_one_element_dtype_shape_or_name() -> None:
    # Prepare
    base = state_digest(_state())
    one_element = _state()
    one_element["fc.weight"][1, 1] = 4.0000005
    as_double = {**_state(), "fc.bias": _state()["fc.bias"].double()}
    reshaped = {**_state(), "fc.weight": _state()["fc.weight"].reshape(4)}
    renamed = {("fc.b" if k == "fc.bias" else k): v for k, v in _state().items()}

    # Execute
    digests = [state_digest(s) for s in (one_element, as_double, reshaped, renamed)]

    # Assert
    assert all(d != base for d in digests)
    assert len(set(digests)) == 4
