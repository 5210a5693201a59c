"""Server-side math on model states: FedAvg weights, weighted sums, reply checks.

Pure functions on ``{name: tensor}`` mappings (no Flower), so strategies stay thin and the
arithmetic is unit-tested against hand-computed values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from fedunlearn.types import StateDict, TensorMap


def fedavg_weights(num_examples: Sequence[float]) -> list[float]:
    """FedAvg aggregation weights ``w_k = n_k / sum_j n_j`` (McMahan et al. 2017, Eq. 1).

    These are the ``w_k^r`` that scale a client's stored deltas in amnesiac corrections.
    """
    if not num_examples:
        raise ValueError("fedavg_weights needs at least one client")
    if any(n < 0 for n in num_examples):
        raise ValueError(f"num_examples must be >= 0, got {list(num_examples)}")
    total = float(sum(num_examples))
    if total <= 0:
        raise ValueError(f"num_examples must not all be 0, got {list(num_examples)}")
    return [float(n) / total for n in num_examples]


def weighted_sum(states: Sequence[TensorMap], weights: Sequence[float]) -> StateDict:
    """``sum_k weights[k] * states[k]`` key by key, in float32 (integer buffers are rounded).

    All states must share keys and shapes (check replies with ``check_state`` first).
    """
    if len(states) != len(weights) or not states:
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    out: StateDict = {}
    for key, first in states[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for state, w in zip(states, weights, strict=True):
            acc += state[key].detach().to(torch.float64) * float(w)
        out[key] = acc.round().to(first.dtype) if not first.is_floating_point() else acc.to(first.dtype)
    return out


def add_scaled(state: TensorMap, delta: Mapping[str, torch.Tensor], scale: float = 1.0) -> StateDict:
    """``state + scale * delta`` for the keys in ``delta``; other entries (buffers) copied."""
    out: StateDict = {k: v.detach().clone() for k, v in state.items()}
    for key, d in delta.items():
        out[key] = (out[key].to(torch.float32) + float(scale) * d.to(torch.float32)).to(out[key].dtype)
    return out


def difference(after: TensorMap, before: TensorMap, keys: Sequence[str] | None = None) -> StateDict:
    """``after - before`` for floating-point entries (all, or the given keys)."""
    names = list(keys) if keys is not None else [k for k, v in before.items() if v.is_floating_point()]
    return {k: after[k].detach().to(torch.float32) - before[k].detach().to(torch.float32) for k in names}


def check_state(candidate: TensorMap, reference: TensorMap, *, exact_keys: bool = True) -> list[str]:
    """Problems that make ``candidate`` unfit to aggregate against ``reference``.

    Checks missing/extra keys, shapes and non-finite values; an empty list means usable.
    The server runs this on every reply, so garbage is left out instead of averaged in.
    """
    problems: list[str] = []
    missing = [k for k in reference if k not in candidate]
    extra = [k for k in candidate if k not in reference]
    if missing:
        problems.append(f"missing entries: {', '.join(missing[:5])}")
    if extra and exact_keys:
        problems.append(f"unexpected entries: {', '.join(extra[:5])}")
    for key, ref in reference.items():
        if key not in candidate:
            continue
        value = candidate[key]
        if tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problems.append(f"{key}: contains NaN or Inf")
    return problems


def state_digest(state: TensorMap) -> str:
    """SHA-256 over names, shapes, dtypes and bytes: identifies a model in receipts and logs."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def fast_slow_step(
    theta: TensorMap,
    forget_delta: Mapping[str, torch.Tensor],
    remain_deltas: Sequence[Mapping[str, torch.Tensor]],
    remain_weights: Sequence[float],
    *,
    apply_scale: float = 1.0,
    alpha: float = 1.0,
) -> StateDict:
    """One outer step of the federated fast-slow update (ALGORITHMS.md, fast-slow aggregation).


    ``theta_fast = theta + apply_scale * Delta_forget`` (fast, the forgetting client),
    ``theta_slow = theta_fast + sum_j w_j Delta_j`` (slow: FedAvg of remain corrections made
    from theta_fast, weights normalized), ``theta' = theta + alpha * (theta_slow - theta)``
    (Lookahead-style outer step; alpha = 1, the default, returns theta_slow).
    """
    fast = add_scaled(theta, forget_delta, apply_scale)
    slow = fast
    if remain_deltas:
        weights = fedavg_weights(list(remain_weights))
        slow = add_scaled(fast, weighted_sum(list(remain_deltas), weights), 1.0)
    if alpha == 1.0:
        return slow
    return add_scaled(theta, difference(slow, theta), alpha)
