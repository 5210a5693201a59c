"""Distance to the retrained reference RT: output KL divergence and Avg.D.

KL is the mean over samples of ``KL(p_RT || p_model)`` (ALGORITHMS.md, Metrics): the
reference's distribution comes first. Avg.D is the
mean absolute gap to RT over FA, RA, TA and MIA, in percentage points (the "Avg. Gap"
of Fan et al. 2024, SalUn, and Huang et al. 2024, SFR-on).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics.accuracy import DEFAULT_BATCH_SIZE, predict_logits

#: The metrics Avg.D averages over, as in the SalUn / SFR-on tables.
AVG_GAP_KEYS: tuple[str, ...] = ("FA", "RA", "TA", "MIA")


def kl_to_reference(p_ref_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over rows of ``KL(softmax(p_ref_logits) || softmax(q_logits))`` in nats.

    ``KL(p || q) = sum_i p_i (log p_i - log q_i)`` is computed from ``log_softmax`` of
    both logit tensors in float64, so it is finite for any finite logits (no ``log 0``).
    The reference (RT) comes first; KL is not symmetric.

    Parameters
    ----------
    p_ref_logits
        ``(N, C)`` logits of the reference model (RT).
    q_logits
        ``(N, C)`` logits of the evaluated model on the same samples, in the same order.

    Returns
    -------
    float
        The mean KL divergence (>= 0), or ``nan`` for ``N == 0``.
    """
    if p_ref_logits.shape != q_logits.shape or p_ref_logits.dim() != 2:
        raise ValueError(
            f"expected two (N, C) logit tensors of the same shape, got {tuple(p_ref_logits.shape)} "
            f"and {tuple(q_logits.shape)}; score the same samples with both models"
        )
    if p_ref_logits.shape[0] == 0:
        return math.nan
    log_p = F.log_softmax(p_ref_logits.detach().cpu().double(), dim=1)
    log_q = F.log_softmax(q_logits.detach().cpu().double(), dim=1)
    per_sample = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return float(per_sample.mean().clamp_min(0.0).item())


def kl_divergence(
    reference_model: nn.Module,
    model: nn.Module,
    dataset: IndexedDataset,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """Mean ``KL(p_RT || p_model)`` over ``dataset`` (``nan`` if it is empty).

    Both models must live on ``device`` (default: each model's own device); their
    train/eval modes are restored afterwards.
    """
    ref = predict_logits(reference_model, dataset, batch_size=batch_size, device=device)
    out = predict_logits(model, dataset, batch_size=batch_size, device=device)
    return kl_to_reference(ref, out)


def average_gap(
    metrics: Mapping[str, float | None],
    reference: Mapping[str, float | None],
    keys: Sequence[str] = AVG_GAP_KEYS,
) -> float:
    """Avg.D: mean of ``|metrics[k] - reference[k]|`` over ``keys``, in percentage points.

    Inputs are fractions in [0, 1] (as every metric here returns); the result is multiplied
    by 100, so FA 0.90 vs RT 0.80 contributes 10 points. A ``nan`` input gives ``nan``.

    >>> average_gap({"FA": 0.75, "RA": 1.0, "TA": 0.9, "MIA": 0.2},
    ...             {"FA": 0.5, "RA": 1.0, "TA": 0.9, "MIA": 0.2})
    6.25
    """
    if not keys:
        raise ValueError("average_gap needs at least one key, got none")
    pairs = [(metrics.get(k), reference.get(k)) for k in keys]
    missing = sorted({k for k, (a, b) in zip(keys, pairs, strict=True) if a is None or b is None})
    if missing:
        raise ValueError(
            f"average_gap over {list(keys)} needs a value for each key on both sides; missing or None: "
            f"{missing}. Compute those metrics for both the model and RT, or pass other keys"
        )
    gaps = [abs(float(a) - float(b)) for a, b in pairs if a is not None and b is not None]
    return 100.0 * sum(gaps) / len(gaps)
