"""Figure 4 run federated: placing a deletion on a share of the client's recorded steps."""

from __future__ import annotations

import numpy as np
import pytest

from fedunlearn.history.results import StepRef
from simulations.paper.fig4_federated import place_on_steps


def _steps(rounds: int, per_round: int, samples: int, seed: int) -> list[StepRef]:
    """``rounds`` reshuffled epochs of ``samples`` ids in batches of ``samples // per_round``."""
    rng, size = np.random.default_rng(seed), samples // per_round
    return [
        StepRef(r, s, order[s * size : (s + 1) * size])
        for r in range(1, rounds + 1)
        for order in [rng.permutation(samples).astype(np.int64)]
        for s in range(per_round)
    ]


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 1.0])
def test_placement_reaches_the_share_with_candidates_only_and_no_more(fraction: float) -> None:
    # Prepare: 3 rounds x 20 steps over 400 samples; ids 0-99 are the deletable class
    steps, candidates = _steps(3, 20, 400, seed=1), np.arange(100, dtype=np.int64)
    # Execute
    ids, share = place_on_steps(steps, candidates, fraction=fraction, total=len(steps), seed=0)
    # Assert: the share is measured on the steps and reached, overshooting by at most the
    # 3 steps (one per round) of the last sample added
    touched = {(s.round, s.step) for s in steps if np.isin(s.sample_ids, ids).any()}
    assert share == len(touched) / len(steps)
    assert set(ids.tolist()) <= set(candidates.tolist())
    assert share >= fraction or len(ids) == len(candidates)
    if fraction < 1.0:
        assert share < fraction + 3 / len(steps) or len(ids) == 1


def test_the_full_share_deletes_every_candidate_as_rt_does() -> None:
    # Prepare: 100 class samples in batches of 20 touch every step long before all are chosen
    steps, candidates = _steps(3, 20, 400, seed=1), np.arange(100, dtype=np.int64)
    # Execute
    ids, share = place_on_steps(steps, candidates, fraction=1.0, total=len(steps), seed=0)
    # Assert
    assert ids.tolist() == candidates.tolist() and share == 1.0


def test_placement_is_seeded() -> None:
    steps, candidates = _steps(2, 10, 200, seed=2), np.arange(50, dtype=np.int64)
    first = place_on_steps(steps, candidates, fraction=0.3, total=len(steps), seed=5)
    again = place_on_steps(steps, candidates, fraction=0.3, total=len(steps), seed=5)
    other = place_on_steps(steps, candidates, fraction=0.3, total=len(steps), seed=6)
    assert np.array_equal(first[0], again[0]) and not np.array_equal(first[0], other[0])
