"""Evaluation of unlearning: FA/RA/TA, MIA-efficacy, KL and Avg.D to RT, backdoor ASR.

The definitions are those of ALGORITHMS.md (Metrics) and are used everywhere: every
fraction is in [0, 1], Avg.D alone is in percentage points. ``evaluate_unlearning`` computes
the whole row of a results table in one call.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics.accuracy import (
    DEFAULT_BATCH_SIZE,
    EvalResult,
    accuracy,
    accuracy_from_logits,
    evaluate_loss_accuracy,
    predict_logits,
)
from fedunlearn.metrics.backdoor import BackdoorSpec, attack_success_rate
from fedunlearn.metrics.divergence import AVG_GAP_KEYS, average_gap, kl_divergence, kl_to_reference
from fedunlearn.metrics.mia import (
    DEFAULT_MAX_SHADOW,
    MIAResult,
    mia_efficacy,
    mia_from_probabilities,
    mia_from_shadow_probabilities,
    probabilities,
    shadow_positions,
)

logger = logging.getLogger(__name__)

#: Default cap on the retained samples RA is measured on (a seeded random subset).
DEFAULT_MAX_RETAIN_EVAL = 10_000

__all__ = [
    "AVG_GAP_KEYS",
    "BackdoorSpec",
    "EvalResult",
    "MIAResult",
    "UnlearningMetrics",
    "accuracy",
    "attack_success_rate",
    "average_gap",
    "evaluate_loss_accuracy",
    "evaluate_unlearning",
    "kl_divergence",
    "kl_to_reference",
    "mia_efficacy",
    "mia_from_probabilities",
    "predict_logits",
]


@dataclass(frozen=True)
class UnlearningMetrics:
    """One row of a results table; fractions in [0, 1], ``None`` where not computed.

    FA, RA, TA: accuracy on the forget, retain and test sets. MIA: MIA-efficacy of the
    confidence attack (``mia_entropy`` / ``mia_modified_entropy``: the other two attacks).
    ``kl_rt_forget`` / ``kl_rt_test``: mean ``KL(p_RT || p_model)`` in nats on the forget and
    test sets. ``backdoor_asr``: attack success rate of the trigger.

    >>> m = UnlearningMetrics(FA=0.75, RA=0.9, TA=0.8, MIA=0.6)
    >>> m.average_gap_to(UnlearningMetrics(FA=0.5, RA=0.9, TA=0.8, MIA=0.6))
    6.25
    """

    FA: float
    RA: float
    TA: float
    MIA: float
    mia_entropy: float | None = None
    mia_modified_entropy: float | None = None
    kl_rt_forget: float | None = None
    kl_rt_test: float | None = None
    backdoor_asr: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """All fields by name (JSON-ready; ``nan`` stays ``nan``)."""
        return dataclasses.asdict(self)

    def average_gap_to(self, reference: UnlearningMetrics) -> float:
        """Avg.D to ``reference`` (normally RT's metrics), in percentage points."""
        return average_gap(self.to_dict(), reference.to_dict())


def _retain_eval_subset(retain: IndexedDataset, max_retain_eval: int | None, seed: int) -> IndexedDataset:
    """``retain``, or a seeded random ``max_retain_eval`` of it (a stream apart from the MIA's)."""
    if max_retain_eval is not None and max_retain_eval < 1:
        raise ValueError(f"max_retain_eval must be >= 1 or None, got {max_retain_eval}")
    if max_retain_eval is None or len(retain) <= max_retain_eval:
        return retain
    rng = np.random.default_rng([seed, 1])
    return retain.select(np.sort(rng.choice(len(retain), size=max_retain_eval, replace=False)))


def _mia_with_logits(
    model: nn.Module,
    forget: tuple[torch.Tensor, torch.Tensor],
    retain: IndexedDataset,
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    max_shadow: int | None,
    batch_size: int,
    device: torch.device | str | None,
) -> MIAResult:
    """``mia_efficacy`` reusing already computed forget and test logits (same result)."""
    retain_pos, test_pos = shadow_positions(len(retain), len(test[0]), seed=seed, max_shadow=max_shadow)
    members = retain.select(retain_pos)
    member_logits = predict_logits(model, members, batch_size=batch_size, device=device)
    t_idx = torch.from_numpy(test_pos)
    return mia_from_shadow_probabilities(
        probabilities(forget[0]),
        forget[1],
        probabilities(member_logits),
        members.labels,
        probabilities(test[0][t_idx]),
        test[1][t_idx],
    )


def evaluate_unlearning(
    model: nn.Module,
    *,
    forget: IndexedDataset,
    retain: IndexedDataset,
    test: IndexedDataset,
    reference_model: nn.Module | None = None,
    backdoor: BackdoorSpec | None = None,
    seed: int = 0,
    max_shadow: int | None = DEFAULT_MAX_SHADOW,
    max_retain_eval: int | None = DEFAULT_MAX_RETAIN_EVAL,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> UnlearningMetrics:
    """FA, RA, TA, MIA-efficacy and, if asked, KL to RT and backdoor ASR, in one call.

    Parameters
    ----------
    model
        The model to evaluate (its train/eval mode is restored afterwards).
    forget, retain, test
        D_f, D_r and the test set.
    reference_model
        RT; when given, ``kl_rt_forget`` and ``kl_rt_test`` are computed.
    backdoor
        Target label and trigger; when given, ``backdoor_asr`` is computed on ``test``.
    seed
        Seeds the MIA shadow sampling and the RA subset.
    max_shadow
        Cap on each side of the MIA shadow set (``mia_efficacy``); ``None``: uncapped.
    max_retain_eval
        RA is measured on a seeded random subset of at most this many retained samples (D_r
        can be the whole training set; 10,000 samples give RA within about +-1 point at 95%
        confidence). ``None``: all of D_r.
    batch_size, device
        Passed to ``predict_logits``.

    Returns
    -------
    UnlearningMetrics
        FA and the MIA fields are ``nan`` for an empty forget set. The MIA fields equal
        ``mia_efficacy(model, ..., seed=seed, max_shadow=max_shadow)``.
    """
    forget_logits = predict_logits(model, forget, batch_size=batch_size, device=device)
    test_logits = predict_logits(model, test, batch_size=batch_size, device=device)
    mia = _mia_with_logits(
        model,
        (forget_logits, forget.labels),
        retain,
        (test_logits, test.labels),
        seed=seed,
        max_shadow=max_shadow,
        batch_size=batch_size,
        device=device,
    )
    kl_forget = kl_test = None
    if reference_model is not None:
        ref_forget = predict_logits(reference_model, forget, batch_size=batch_size, device=device)
        ref_test = predict_logits(reference_model, test, batch_size=batch_size, device=device)
        kl_forget, kl_test = kl_to_reference(ref_forget, forget_logits), kl_to_reference(ref_test, test_logits)
    asr = None
    if backdoor is not None:
        asr = attack_success_rate(
            model,
            test,
            target_label=backdoor.target_label,
            pattern=backdoor.pattern,
            batch_size=batch_size,
            device=device,
        )
    retain_eval = _retain_eval_subset(retain, max_retain_eval, seed)
    result = UnlearningMetrics(
        FA=accuracy_from_logits(forget_logits, forget.labels),
        RA=accuracy(model, retain_eval, batch_size=batch_size, device=device),
        TA=accuracy_from_logits(test_logits, test.labels),
        MIA=mia.value,
        mia_entropy=mia.entropy,
        mia_modified_entropy=mia.modified_entropy,
        kl_rt_forget=kl_forget,
        kl_rt_test=kl_test,
        backdoor_asr=asr,
    )
    logger.debug("unlearning metrics: %s", result)
    return result
